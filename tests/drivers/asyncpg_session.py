"""asyncpg through pgwarden: run by tests/drivers.rs once directly against the primary and
once through the proxy. Lines starting with "route" say which server ran what and are checked
by the test; every other line must be the same in both runs.

argv: port password dbname primary_port standby_port
"""
import asyncio
import datetime
import decimal
import sys

import asyncpg

port, password, db, primary, standby = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
port = int(port)
proxied = port not in (primary, standby)


def out(*a):
    print(*a, flush=True)


def route(*a):
    print("route", *a, flush=True)


async def connect(**kw):
    return await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", password=password, database=db, **kw)


async def caught_up():
    """Waits until the standby has replayed everything the primary has written."""
    p = await asyncpg.connect(host="127.0.0.1", port=primary, user="postgres", password=password, database=db)
    # The standby may not have replayed the CREATE DATABASE yet.
    for _ in range(200):
        try:
            s = await asyncpg.connect(host="127.0.0.1", port=standby, user="postgres", password=password, database=db)
            break
        except asyncpg.InvalidCatalogNameError:
            await asyncio.sleep(0.05)
    else:
        s = await asyncpg.connect(host="127.0.0.1", port=standby, user="postgres", password=password, database=db)
    lsn = await p.fetchval("SELECT pg_current_wal_lsn()")
    for _ in range(200):
        if await s.fetchval("SELECT pg_last_wal_replay_lsn() >= $1", lsn):
            break
        await asyncio.sleep(0.05)
    await p.close()
    await s.close()


async def main():
    conn = await connect()
    await conn.execute("DROP TABLE IF EXISTS ap; CREATE TABLE ap (id int PRIMARY KEY, name text, n numeric, at timestamptz)")
    t0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    await conn.executemany(
        "INSERT INTO ap VALUES ($1, $2, $3, $4)",
        [(i, "n%d" % i, decimal.Decimal(i) / 4, t0 + datetime.timedelta(hours=i)) for i in range(100)],
    )
    rows = await conn.fetch("SELECT id, name, n, at FROM ap WHERE id < $1 AND name LIKE $2 ORDER BY id", 4, "n%")
    out("fetch", [tuple(r) for r in rows])
    out("fetchrow", tuple(await conn.fetchrow("SELECT count(*), sum(n) FROM ap WHERE at >= $1", t0 + datetime.timedelta(days=2))))

    # A transaction reads its own write; after COMMIT the write is there for the next read.
    async with conn.transaction():
        await conn.execute("INSERT INTO ap VALUES ($1, $2, $3, $4)", 1000, "tx", 1, None)
        out("in tx", await conn.fetchval("SELECT name FROM ap WHERE id = $1", 1000))
    out("after commit", await conn.fetchval("SELECT count(*) FROM ap"))

    res = await conn.copy_records_to_table(
        "ap", records=[(2000 + i, "c%d" % i, decimal.Decimal(i), None) for i in range(50)], columns=["id", "name", "n", "at"]
    )
    out("copy", res, await conn.fetchval("SELECT count(*) FROM ap WHERE id >= $1", 2000))

    # Server-side errors in the middle; the session goes on.
    try:
        await conn.fetchval("SELECT 1 / $1::int", 0)
    except asyncpg.DivisionByZeroError as e:
        out("error", e.sqlstate)
    try:
        await conn.execute("INSERT INTO ap VALUES ($1, 'dup', 0, NULL)", 1)
    except asyncpg.UniqueViolationError as e:
        out("error", e.sqlstate)
    out("after error", await conn.fetchval("SELECT name FROM ap WHERE id = $1", 3))
    try:
        async with conn.transaction():
            await conn.execute("INSERT INTO ap VALUES (3000, 'rolled back', 0, NULL)")
            await conn.fetch("SELECT * FROM missing_table")
    except asyncpg.UndefinedTableError as e:
        out("tx error", e.sqlstate)
    out("rolled back", await conn.fetchval("SELECT count(*) FROM ap WHERE id = $1", 3000))
    out("same statement again", await conn.fetchval("SELECT 1 / $1::int", 1))
    await conn.close()

    await caught_up()
    # A session whose reads are balanced to the standby (through the proxy, sessions are
    # spread over the nodes: try until one lands there).
    for _ in range(60):
        c = await connect()
        if not proxied or await c.fetchval("SELECT inet_server_port()") == standby:
            break
        await c.close()
    else:
        out("no session read from the standby")
    stmt = await c.prepare("SELECT count(*), max(name), inet_server_port() FROM ap WHERE id < $1")
    cnt, name, where = await stmt.fetchrow(50)
    out("prepared", cnt, name)
    route("prepared first", where)
    # The same statement inside a transaction: the transaction runs on the primary, so the
    # statement must exist there too.
    async with c.transaction():
        wrote = await c.fetchval("INSERT INTO ap VALUES ($1, 'w', 0, NULL) RETURNING inet_server_port()", 5000)
        route("insert", wrote)
        cnt, name, where = await stmt.fetchrow(10000)
        out("prepared in tx", cnt, name)
        route("prepared in tx", where)
    # After the commit, the read sees the write (wherever it runs).
    for i in range(5):
        await c.execute("INSERT INTO ap VALUES ($1, 'w', 0, NULL)", 5001 + i)
        cnt, name, where = await stmt.fetchrow(100000)
        out("prepared after write", i, cnt, name)
        route("prepared after write", where)
    # Once the standby has replayed those writes (and the warden has seen it), the same
    # statement is served by the standby again.
    await caught_up()
    for _ in range(50):
        cnt, name, where = await stmt.fetchrow(100000)
        if not proxied or where == standby:
            break
        await asyncio.sleep(0.1)
    out("prepared after catch-up", cnt, name)
    route("prepared after catch-up", where)
    # The statement cache: the same text again reuses asyncpg's own named statement.
    for i in range(3):
        out("cached", await c.fetchval("SELECT name FROM ap WHERE id = $1", 10 + i))
    await c.close()

    # A pool of several connections, each set up with SET and given back with asyncpg's
    # reset (RESET ALL, UNLISTEN *, CLOSE ALL ...).
    async def init(conn):
        await conn.execute("SET intervalstyle = 'iso_8601'")

    pool = await asyncpg.create_pool(
        host="127.0.0.1", port=port, user="postgres", password=password, database=db,
        min_size=4, max_size=4, init=init, server_settings={"application_name": "pgw-pool"},
    )

    async def work(i):
        async with pool.acquire() as pc:
            async with pc.transaction():
                await pc.execute("INSERT INTO ap VALUES ($1, $2, 0, NULL)", 10000 + i, "pool%d" % i)
            v = await pc.fetchrow(
                "SELECT name, current_setting('application_name'), interval '1 day' FROM ap WHERE id = $1", 10000 + i
            )
            return tuple(v)

    results = await asyncio.gather(*(work(i) for i in range(20)))
    out("pool", sorted(results))
    out("pool count", await pool.fetchval("SELECT count(*) FROM ap WHERE name LIKE $1", "pool%"))
    ports = set()
    for _ in range(20):
        ports.add(await pool.fetchval("SELECT inet_server_port()"))
    route("pool ports", sorted(ports))
    await pool.close()

    # A pool of one connection, acquired and released several times: every release sends
    # asyncpg's reset, one simple Query "SELECT pg_advisory_unlock_all(); CLOSE ALL;
    # UNLISTEN *; RESET ALL;". Through pgwarden it must not pin the pooled session to the
    # primary, nor make it wait for the standby (it writes nothing), and a setting made before
    # a release is gone after it. Another client writes to the primary before every release:
    # a reset taken for a write would send the next read to the primary.
    await caught_up()
    for _ in range(60):
        one = await asyncpg.create_pool(
            host="127.0.0.1", port=port, user="postgres", password=password, database=db, min_size=1, max_size=1,
        )
        if not proxied or await one.fetchval("SELECT inet_server_port()") == standby:
            break
        await one.close()
    else:
        out("no pooled session read from the standby")
    writer = await asyncpg.connect(host="127.0.0.1", port=primary, user="postgres", password=password, database=db)
    await writer.execute("CREATE TABLE apw (id serial PRIMARY KEY)")
    reads = []
    for i in range(6):
        async with one.acquire() as pc:
            setting, where = await pc.fetchrow("SELECT current_setting('work_mem'), inet_server_port()")
            out("pool of one, acquired", i, setting)
            reads.append(where)
            await pc.execute("SET work_mem = '7MB'")
            setting, where = await pc.fetchrow("SELECT current_setting('work_mem'), inet_server_port()")
            out("pool of one, after SET", i, setting)
            reads.append(where)
            await writer.execute("INSERT INTO apw DEFAULT VALUES")
    route("pool of one reads", sorted(set(reads)))
    await writer.close()
    await one.close()

    # A view whose column calls nextval(): a standby refuses the read as a write, one server
    # runs it. Through pgwarden it runs again on the primary (asyncpg's named statement, made
    # there), and the cached statement goes there from then on.
    conn = await connect()
    await conn.execute("CREATE SEQUENCE aps; CREATE VIEW apv AS SELECT nextval('aps') AS n")
    await conn.close()
    await caught_up()
    for _ in range(60):
        conn = await connect()
        if not proxied or await conn.fetchval("SELECT inet_server_port()") == standby:
            break
        await conn.close()
    where = set()
    for i in range(3):
        try:
            n, at = await conn.fetchrow("SELECT n, inet_server_port() FROM apv")
            out("view with nextval", i, n)
            where.add(at)
        except asyncpg.PostgresError as e:
            out("view with nextval", i, "error", e.sqlstate)
    route("view with nextval", sorted(where))
    await conn.close()

    # pgpool's SHOW POOL_NODES, through pgwarden only: asyncpg prepares every query (a named
    # statement, described, then bound and executed), and caches it for the next call.
    if proxied:
        conn = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", password=password, database=db)
        for i in range(3):
            rows = await conn.fetch("SHOW POOL_NODES")
            route("show pool_nodes", len(rows), rows[0]["port"])
        async with conn.transaction():
            cur = await conn.cursor("SHOW POOL_NODES")
            first = await cur.fetch(1)
            rest = await cur.fetch(5)
            route("show cursor", len(first), len(rest))
        await conn.close()
    out("done")


asyncio.run(main())
