// node-postgres through pgwarden: run by tests/drivers.rs once directly against the primary and
// once through the proxy. Lines starting with "route" say which server ran what and are checked
// by the test; every other line must be the same in both runs.
//
// argv: port password dbname primary_port standby_port
const { Client } = require("pg");

const [port, password, db, primary, standby] = process.argv.slice(2);
const proxied = port !== primary && port !== standby;
const out = (...a) => console.log(...a.map((x) => (typeof x === "string" ? x : JSON.stringify(x))));
const route = (...a) => out("route", ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function connect() {
  const c = new Client({ host: "127.0.0.1", port: Number(port), user: "postgres", password, database: db });
  await c.connect();
  return c;
}

async function main() {
  const c = await connect();
  await c.query("DROP TABLE IF EXISTS np");
  await c.query("CREATE TABLE np (id int PRIMARY KEY, name text, at date)");
  // Parameterized queries: unnamed statements.
  for (let i = 0; i < 100; i++) {
    await c.query("INSERT INTO np VALUES ($1, $2, $3)", [i, `n${i}`, "2024-01-01"]);
  }
  let r = await c.query("SELECT count(*)::int AS n, max(name) AS m FROM np WHERE id < $1", [50]);
  out("params", r.rows);
  // A transaction that reads its own write, and one rolled back.
  await c.query("BEGIN");
  await c.query("INSERT INTO np VALUES ($1, $2, NULL)", [1000, "tx"]);
  r = await c.query("SELECT name FROM np WHERE id = $1", [1000]);
  out("in tx", r.rows);
  await c.query("COMMIT");
  await c.query("BEGIN");
  await c.query("INSERT INTO np VALUES ($1, $2, NULL)", [1001, "gone"]);
  await c.query("ROLLBACK");
  r = await c.query("SELECT count(*)::int AS n FROM np WHERE id >= $1", [1000]);
  out("after tx", r.rows);
  // An error, and the connection goes on.
  try {
    await c.query("SELECT * FROM np WHERE id = $1::int", ["not a number"]);
  } catch (e) {
    out("error", e.code);
  }
  try {
    await c.query({ name: "bad", text: "SELECT nosuchcolumn FROM np" });
  } catch (e) {
    out("error", e.code);
  }
  r = await c.query("SELECT name FROM np WHERE id = $1", [7]);
  out("after error", r.rows);
  await c.end();

  // Named prepared statements reused across routed reads: a session balanced to the standby.
  await sleep(300);
  let s;
  for (let i = 0; i < 60; i++) {
    s = await connect();
    const p = (await s.query("SELECT inet_server_port() AS p")).rows[0].p;
    if (!proxied || p === Number(standby)) break;
    await s.end();
  }
  const named = { name: "count_from", text: "SELECT count(*)::int AS n, inet_server_port() AS p FROM np WHERE id >= $1" };
  const ports = new Set();
  for (let i = 0; i < 20; i++) {
    if (i % 5 === 2) {
      // A write in between: the next read must see it, wherever it runs.
      const w = await s.query("INSERT INTO np VALUES ($1, 'w', NULL) RETURNING inet_server_port() AS p", [2000 + i]);
      route("write", w.rows[0].p);
    }
    if (i === 10) await s.query("BEGIN");
    r = await s.query({ ...named, values: [i] });
    if (i === 12) await s.query("COMMIT");
    out("named", i, r.rows[0].n);
    ports.add(r.rows[0].p);
    await sleep(i >= 13 ? 150 : 0);
  }
  route("named ports", [...ports].sort());
  await s.end();

  // LISTEN/NOTIFY between two clients.
  const l = await connect();
  const n = await connect();
  const got = new Promise((resolve) => l.on("notification", (m) => resolve(m)));
  await l.query("LISTEN pgw_chan");
  await n.query("SELECT pg_notify($1, $2)", ["pgw_chan", "hello"]);
  await n.query("NOTIFY pgw_chan, 'again'");
  const timeout = new Promise((r) => setTimeout(() => r(null), 10000).unref());
  const m = await Promise.race([got, timeout]);
  out("notification", m && m.channel, m && m.payload);
  await l.end();
  await n.end();
  out("done");
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
