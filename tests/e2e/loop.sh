# A shell loop component: 40 numbered lines, each followed by an external sleep.
for i in $(seq 1 40); do
	echo "line $i"
	sleep 0.05
done
echo "done"
