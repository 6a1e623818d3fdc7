# A component nobody here wrote the runtime of: a hash chain with progress lines, ~3 s in all.
import hashlib
import time

h = b"ferry"
values = []
for step in range(1, 31):
    for _ in range(100000):
        h = hashlib.sha256(h).digest()
    values.append(int.from_bytes(h[:4], "little"))
    print(f"step {step} {h.hex()[:16]} {sum(values) % 1000003}", flush=True)
    time.sleep(0.05)
print(f"done {len(values)} {max(values)}", flush=True)
