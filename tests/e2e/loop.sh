# A shell loop component: 40 numbered lines with a checksum, computed by bash alone (no child
# processes: process trees are issue 3), with busy work between lines so a checkpoint lands mid-run.
sum=0
for ((i = 1; i <= 40; i++)); do
	for ((j = 0; j < 20000; j++)); do
		sum=$(((sum * 31 + j + i) % 1000003))
	done
	echo "line $i sum $sum"
done
echo "done"
