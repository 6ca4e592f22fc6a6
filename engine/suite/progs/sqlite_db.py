# sqlite_db: a SQLite database (python3's sqlite3 module) written every tick,
# through the checkpoint and after it, in journal mode argv[2] (delete or
# wal). After restore the database must not be malformed, must hold the rows
# committed before the checkpoint and the later writes exactly once, and a
# fresh connection (reading the file from disk) must agree. Protocol as in
# common.h: READY, "tick <i>" lines, then PASS or FAIL.
import os
import sqlite3
import sys
import time

ticks = int(sys.argv[1]) if len(sys.argv) > 1 else 40
mode = sys.argv[2] if len(sys.argv) > 2 else "delete"


def fail(why):
    print(f"FAIL: {why}", flush=True)
    sys.exit(1)


def payload(i):
    return (f"row {i} " * (1 + i % 50)).encode()


def check(con, label):
    ok = con.execute("PRAGMA integrity_check").fetchall()
    if ok != [("ok",)]:
        fail(f"{label}: integrity_check says {ok[:3]}")
    rows = con.execute("SELECT i, v FROM t ORDER BY i").fetchall()
    want = [(i, payload(i)) for i in range(50)] + [(100 + i, payload(100 + i)) for i in range(ticks)]
    if rows != want:
        have = [r[0] for r in rows]
        fail(f"{label}: {len(rows)} rows, expected {len(want)}; keys {have[:5]}..{have[-5:]}")
    n = con.execute("SELECT n FROM counter").fetchone()
    if n != (ticks,):
        fail(f"{label}: counter {n}, expected {ticks}")


con = sqlite3.connect("test.db", isolation_level=None)
got = con.execute(f"PRAGMA journal_mode={mode}").fetchone()[0]
if got != mode:
    fail(f"journal_mode {got}")
con.execute("CREATE TABLE t (i INTEGER PRIMARY KEY, v BLOB NOT NULL)")
con.execute("CREATE TABLE counter (n INTEGER NOT NULL)")
con.execute("BEGIN")
con.executemany("INSERT INTO t VALUES (?, ?)", [(i, payload(i)) for i in range(50)])
con.execute("INSERT INTO counter VALUES (0)")
con.execute("COMMIT")
print(f"READY {os.getpid()}", flush=True)

for i in range(ticks):
    time.sleep(0.1)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("INSERT INTO t VALUES (?, ?)", (100 + i, payload(100 + i)))
        con.execute("UPDATE counter SET n = n + 1")
        con.execute("COMMIT")
    except sqlite3.Error as e:
        fail(f"tick {i}: {e}")
    print(f"tick {i}", flush=True)

try:
    check(con, "same connection")
    con.close()
    fresh = sqlite3.connect("test.db")
    check(fresh, "fresh connection")
    fresh.close()
except sqlite3.Error as e:
    fail(f"sqlite error: {e}")
print("PASS", flush=True)
