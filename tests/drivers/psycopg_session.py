"""psycopg 3 through pgwarden: run by tests/drivers.rs once directly against the primary and
once through the proxy. Lines starting with "route" say which server ran what and are checked
by the test; every other line must be the same in both runs.

argv: port password dbname primary_port standby_port
"""
import sys
import time

import psycopg

port, password, db, primary, standby = (int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
proxied = port not in (primary, standby)


def out(*a):
    print(*a, flush=True)


def route(*a):
    print("route", *a, flush=True)


def connect(**kw):
    return psycopg.connect(host="127.0.0.1", port=port, user="postgres", password=password, dbname=db, **kw)


# Server-side binding: every statement with parameters goes through Parse/Bind/Execute.
with connect() as conn:
    conn.execute("DROP TABLE IF EXISTS pp")
    conn.execute("CREATE TABLE pp (id int PRIMARY KEY, name text, data bytea)")
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO pp VALUES (%s, %s, %s)", [(i, "n%d" % i, bytes([i % 256]) * 10) for i in range(200)])
        cur.execute("SELECT count(*), sum(length(data)) FROM pp WHERE name LIKE %s", ("n%",))
        out("rows", cur.fetchone())
        cur.execute("SELECT name, data FROM pp WHERE id = %s", (42,), binary=True)
        out("binary", cur.fetchone())
    conn.commit()

    # Pipeline mode with an error in the middle: what was before it stays, what follows is
    # skipped, and the connection works afterwards.
    conn.autocommit = True
    results = []
    try:
        with conn.pipeline() as p:
            c1 = conn.execute("INSERT INTO pp VALUES (%s, %s, NULL) RETURNING id", (1000, "pipe"))
            c2 = conn.execute("SELECT name FROM pp WHERE id = %s", (1000,))
            p.sync()
            c3 = conn.execute("INSERT INTO pp VALUES (%s, %s, NULL)", (1, "dup"))
            c4 = conn.execute("SELECT %s::int", (7,))
            p.sync()
    except psycopg.errors.UniqueViolation as e:
        out("pipeline error", e.sqlstate)
    out("pipeline before error", c1.fetchone(), c2.fetchone())
    with conn.pipeline():
        cs = [conn.execute("SELECT name FROM pp WHERE id = %s", (i,)) for i in range(5)]
        names = [c.fetchone()[0] for c in cs]
    out("pipeline after error", names)

    # COPY in and out.
    with conn.cursor() as cur:
        with cur.copy("COPY pp (id, name) FROM STDIN") as copy:
            for i in range(50):
                copy.write_row((3000 + i, "copy%d" % i))
        with cur.copy("COPY (SELECT id, name FROM pp WHERE id >= 3000 ORDER BY id) TO STDOUT") as copy:
            rows = list(copy.rows())
        out("copy out", len(rows), rows[:2], rows[-1])

    # prepare=True: a named statement, used again and again.
    for i in range(4):
        r = conn.execute("SELECT count(*), min(name) FROM pp WHERE id >= %s", (3000 + i,), prepare=True).fetchone()
        out("prepared", i, r)

    # Read-your-writes: a write, then at once a read that must see it.
    for i in range(10):
        conn.execute("INSERT INTO pp VALUES (%s, %s, NULL)", (4000 + i, "ryw%d" % i))
        r = conn.execute("SELECT name, inet_server_port() FROM pp WHERE id = %s", (4000 + i,)).fetchone()
        out("read your write", r[0])
        route("read your write", r[1])

# Autocommit reads through the proxy: a session balanced to the standby reads there, with
# server-side binding and prepared statements.
time.sleep(0.5)
for _ in range(60):
    conn = connect(autocommit=True)
    if not proxied or conn.execute("SELECT inet_server_port()").fetchone()[0] == standby:
        break
    conn.close()
for _ in range(50):
    r = conn.execute("SELECT count(*), inet_server_port() FROM pp WHERE name LIKE %s", ("ryw%",), prepare=True).fetchone()
    if not proxied or (r[0] == 10 and r[1] == standby):
        break
    time.sleep(0.1)
out("standby read", r[0])
route("standby read", r[1])

# A pipeline that reads, fetches (psycopg flushes to get the result), then writes and reads
# that back: through the proxy the read runs on the standby and the write on the primary,
# which a standby would refuse ("cannot execute INSERT in a read-only transaction").
with conn.pipeline():
    n = conn.execute("SELECT count(*) FROM pp WHERE name LIKE %s", ("ryw%",)).fetchone()[0]
    conn.execute("INSERT INTO pp VALUES (%s, %s, NULL)", (5000, "piped"))
    r = conn.execute("SELECT name FROM pp WHERE id = %s", (5000,)).fetchone()
out("pipeline read then write", n, r[0])
conn.close()

# A server-side cursor WITH HOLD (psycopg declares and fetches it through Parse/Bind) made in
# a read-only transaction, which pgwarden balances to the standby: after the COMMIT the
# cursor lives only there, and the fetches and the CLOSE must go there.
for _ in range(60):
    conn = connect()
    conn.read_only = True
    if not proxied or conn.execute("SELECT inet_server_port()").fetchone()[0] == standby:
        break
    conn.close()
cur = conn.cursor("held", withhold=True)
cur.execute("SELECT g, inet_server_port() FROM generate_series(1, 10) g")
first = cur.fetchmany(2)
conn.commit()
rest = cur.fetchmany(3)
cur.close()
out("held cursor", [r[0] for r in first], [r[0] for r in rest])
route("held cursor", first[0][1])
conn.close()

# A view whose column calls nextval(): a standby refuses the read as a write, one server runs
# it. Through pgwarden it runs again on the primary, first as psycopg's unnamed statement,
# from the 5th run (prepare_threshold) as a named one.
with connect(autocommit=True) as c:
    c.execute("CREATE SEQUENCE pps")
    c.execute("CREATE VIEW ppv AS SELECT nextval('pps') AS n")
for _ in range(200):
    with psycopg.connect(host="127.0.0.1", port=standby, user="postgres", password=password, dbname=db, autocommit=True) as s:
        if s.execute("SELECT count(*) FROM pg_views WHERE viewname = 'ppv'").fetchone()[0] == 1:
            break
    time.sleep(0.05)
for _ in range(60):
    conn = connect(autocommit=True)
    if not proxied or conn.execute("SELECT inet_server_port()").fetchone()[0] == standby:
        break
    conn.close()
where = set()
for i in range(7):
    try:
        n, port_ = conn.execute("SELECT n, inet_server_port() FROM ppv WHERE n > %s", (0,)).fetchone()
        out("view with nextval", i, n)
        where.add(port_)
    except psycopg.Error as e:
        out("view with nextval", i, "error", e.sqlstate)
route("view with nextval", sorted(where))
conn.close()

# pgpool's SHOW POOL_NODES, through pgwarden only (PostgreSQL has no such setting): psycopg
# sends it as a simple query, then, from its 5th run (prepare_threshold), as a prepared
# statement, with binary results at once; each answer lists both nodes. With a cache of two,
# psycopg deallocates the statement and prepares it again as other queries push it out.
if proxied:
    with connect(autocommit=True) as conn:
        for i in range(8):
            for binary in (False, True):
                rows = conn.execute("SHOW POOL_NODES", binary=binary).fetchall()
                route("show pool_nodes", len(rows), rows[0][2])
        route("show pool_version", "pgwarden" in conn.execute("SHOW POOL_VERSION", prepare=True).fetchone()[0])
        # After a pipeline (psycopg ends one with Sync, then Flush), the prepared SHOW still
        # answers (it was sent to PostgreSQL: "prepared statement does not exist").
        with conn.pipeline():
            conn.execute("SELECT 1")
        rows = conn.execute("SHOW POOL_NODES").fetchall()
        route("show pool_nodes", len(rows), rows[0][2])
        conn.prepared_max = 2
        for i in range(6):
            n = len(conn.execute("SHOW POOL_NODES", prepare=True).fetchall())
            a = conn.execute("SELECT %s::int + 1", (i,), prepare=True).fetchone()[0]
            b = conn.execute("SELECT %s::int + 2", (i,), prepare=True).fetchone()[0]
            route("show among evictions", n, a - i, b - i)
out("done")
