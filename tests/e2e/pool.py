# A component of several processes nobody here wrote the runtime of: a multiprocessing pool
# (fork start method: worker processes, pipes and a semaphore in shared memory between them)
# hashing 48 chunks, 4 workers; progress lines in order; ~4 s in all.
import hashlib
import multiprocessing
import time


def work(i):
    h = str(i).encode()
    for _ in range(150000):
        h = hashlib.sha256(h).digest()
    time.sleep(0.05)
    return i, int.from_bytes(h[:4], "little")


if __name__ == "__main__":
    multiprocessing.set_start_method("fork")
    total = 0
    with multiprocessing.Pool(4) as pool:
        for n, (i, v) in enumerate(pool.imap(work, range(48)), 1):
            total = (total * 31 + v) % 1000000007
            print(f"chunk {n} {i} {v:08x} {total}", flush=True)
    print(f"done {total}", flush=True)
