// pgjdbc (Debian's libpostgresql-jdbc-java) through pgwarden: run by tests/drivers.rs once
// directly against the primary and once through the proxy, as a single-file program
// (`java -cp postgresql.jar JdbcSession.java ...`). Lines starting with "route" say which server
// ran what and are checked by the test; every other line must be the same in both runs.
//
// What pgjdbc does that other drivers do not: a PreparedStatement becomes a named server
// statement (S_n) from its fifth execution (prepareThreshold); with autocommit off, BEGIN goes
// out in the same message batch as the first statement; setReadOnly(true) makes that BEGIN
// READ ONLY; setFetchSize inside a transaction reads through a named portal in steps;
// executeBatch pipelines its statements behind one Sync; setQueryTimeout cancels with a
// CancelRequest; the CopyManager does COPY in and out.
//
// args: port password dbname primary_port standby_port
import java.io.StringReader;
import java.io.StringWriter;
import java.sql.*;
import java.util.*;
import org.postgresql.PGConnection;
import org.postgresql.copy.CopyManager;

public class JdbcSession {
    static String port, password, db, primary, standby;
    static boolean proxied;

    static Connection connect() throws SQLException {
        Properties p = new Properties();
        p.setProperty("user", "postgres");
        p.setProperty("password", password);
        return DriverManager.getConnection("jdbc:postgresql://127.0.0.1:" + port + "/" + db, p);
    }

    static void out(Object... parts) {
        StringBuilder b = new StringBuilder();
        for (Object o : parts) {
            if (b.length() > 0) b.append(' ');
            b.append(o);
        }
        System.out.println(b);
    }

    static int serverPort(Connection c) throws SQLException {
        try (Statement s = c.createStatement();
             ResultSet r = s.executeQuery("SELECT inet_server_port()")) {
            r.next();
            return r.getInt(1);
        }
    }

    /// A connection whose reads are balanced to the standby (through the proxy; directly, the
    /// primary's), retried: session balancing picks a node per session.
    static Connection onStandby() throws Exception {
        for (int i = 0; i < 60; i++) {
            Connection c = connect();
            if (!proxied || serverPort(c) == Integer.parseInt(standby)) return c;
            c.close();
        }
        throw new RuntimeException("no session was balanced to the standby in 60 tries");
    }

    public static void main(String[] args) throws Exception {
        port = args[0];
        password = args[1];
        db = args[2];
        primary = args[3];
        standby = args[4];
        proxied = !port.equals(primary) && !port.equals(standby);

        try (Connection c = connect(); Statement s = c.createStatement()) {
            s.execute("DROP TABLE IF EXISTS jd");
            s.execute("CREATE TABLE jd (id int PRIMARY KEY, name text, at timestamptz, amount numeric)");
            // executeBatch: the inserts pipelined behind one Sync.
            try (PreparedStatement p = c.prepareStatement("INSERT INTO jd VALUES (?, ?, ?, ?)")) {
                for (int i = 0; i < 200; i++) {
                    p.setInt(1, i);
                    p.setString(2, "n" + i);
                    p.setTimestamp(3, Timestamp.valueOf("2024-01-01 00:00:00"));
                    p.setBigDecimal(4, new java.math.BigDecimal(i + ".25"));
                    p.addBatch();
                }
                int[] counts = p.executeBatch();
                out("batch", counts.length, Arrays.stream(counts).sum());
            }
            // A PreparedStatement run more than prepareThreshold times: unnamed, then S_n.
            try (PreparedStatement p = c.prepareStatement("SELECT name, amount FROM jd WHERE id = ?")) {
                for (int i = 0; i < 10; i++) {
                    p.setInt(1, i * 7);
                    try (ResultSet r = p.executeQuery()) {
                        r.next();
                        out("prepared", i, r.getString(1), r.getBigDecimal(2));
                    }
                }
            }
            // Errors: a bad statement, and the connection goes on.
            try {
                s.executeQuery("SELECT nosuchcolumn FROM jd");
            } catch (SQLException e) {
                out("error", e.getSQLState());
            }
            try (ResultSet r = s.executeQuery("SELECT count(*) FROM jd")) {
                r.next();
                out("after error", r.getInt(1));
            }
            // Several statements in one execute: each result in turn.
            boolean isResult = s.execute("SELECT 1; SELECT 'two'; UPDATE jd SET name = 'u' WHERE id = 1");
            List<String> seen = new ArrayList<>();
            while (true) {
                if (isResult) {
                    try (ResultSet r = s.getResultSet()) {
                        r.next();
                        seen.add(r.getString(1));
                    }
                } else if (s.getUpdateCount() == -1) {
                    break;
                } else {
                    seen.add("updated " + s.getUpdateCount());
                }
                isResult = s.getMoreResults();
            }
            out("multi", seen);
        }

        // Transactions with autocommit off: BEGIN rides with the first statement.
        try (Connection c = connect()) {
            c.setAutoCommit(false);
            try (PreparedStatement ins = c.prepareStatement("INSERT INTO jd VALUES (?, 'tx', now(), 0) RETURNING inet_server_port()");
                 PreparedStatement sel = c.prepareStatement("SELECT count(*) FROM jd WHERE name = 'tx'")) {
                ins.setInt(1, 1000);
                try (ResultSet r = ins.executeQuery()) {
                    r.next();
                    route("tx write", r.getInt(1));
                }
                try (ResultSet r = sel.executeQuery()) {
                    r.next();
                    out("tx sees its write", r.getInt(1));
                }
                c.commit();
                // A savepoint: the failed statement is undone, the transaction goes on.
                ins.setInt(1, 1001);
                ins.executeQuery().close();
                Savepoint sp = c.setSavepoint();
                try {
                    ins.setInt(1, 1001);
                    ins.executeQuery();
                } catch (SQLException e) {
                    out("duplicate", e.getSQLState());
                    c.rollback(sp);
                }
                ins.setInt(1, 1002);
                ins.executeQuery().close();
                c.commit();
                // Rolled back: gone.
                ins.setInt(1, 1003);
                ins.executeQuery().close();
                c.rollback();
            }
            try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("SELECT array_agg(id ORDER BY id)::text FROM jd WHERE id >= 1000")) {
                r.next();
                out("after transactions", r.getString(1));
            }
            c.commit();
            // setFetchSize inside a transaction: a named portal read 25 rows at a time.
            try (Statement s = c.createStatement()) {
                s.setFetchSize(25);
                long sum = 0;
                int rows = 0;
                try (ResultSet r = s.executeQuery("SELECT id FROM jd WHERE id < 1000 ORDER BY id")) {
                    while (r.next()) {
                        sum += r.getInt(1);
                        rows++;
                    }
                }
                out("fetched in steps", rows, sum);
            }
            c.commit();
        }

        // COPY out and in through the CopyManager.
        try (Connection c = connect()) {
            CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
            StringWriter w = new StringWriter();
            long n = cm.copyOut("COPY (SELECT id, name FROM jd WHERE id < 5 ORDER BY id) TO STDOUT", w);
            out("copy out", n, w.toString().replace("\n", "|"));
            long m = cm.copyIn("COPY jd (id, name) FROM STDIN", new StringReader("3000\tcopied\n3001\tcopied\n"));
            out("copy in", m);
        }

        // Read-only transactions and reads balanced to the standby, after it has replayed the
        // writes above (read-your-writes: a new session has no floor, so wait for the replay).
        Thread.sleep(proxied ? 1500 : 0);
        try (Connection c = onStandby()) {
            try (PreparedStatement p = c.prepareStatement("SELECT count(*), inet_server_port() FROM jd WHERE id >= ?")) {
                Set<Integer> ports = new TreeSet<>();
                for (int i = 0; i < 8; i++) {
                    p.setInt(1, i);
                    try (ResultSet r = p.executeQuery()) {
                        r.next();
                        out("balanced read", i, r.getInt(1));
                        ports.add(r.getInt(2));
                    }
                }
                route("balanced reads", ports);
                // BEGIN READ ONLY (setReadOnly with autocommit off), the same S_n statement.
                c.setReadOnly(true);
                c.setAutoCommit(false);
                ports.clear();
                for (int i = 0; i < 3; i++) {
                    p.setInt(1, i);
                    try (ResultSet r = p.executeQuery()) {
                        r.next();
                        out("read-only tx read", i, r.getInt(1));
                        ports.add(r.getInt(2));
                    }
                }
                try (Statement s = c.createStatement()) {
                    s.executeUpdate("DELETE FROM jd");
                } catch (SQLException e) {
                    out("write in read-only tx", e.getSQLState());
                }
                c.rollback();
                route("read-only tx", ports);
                // Back to read-write: a write, then a read that must see it.
                c.setReadOnly(false);
                try (Statement s = c.createStatement()) {
                    s.executeUpdate("UPDATE jd SET name = 'after' WHERE id = 3000");
                }
                c.commit();
                c.setAutoCommit(true);
                try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("SELECT name FROM jd WHERE id = 3000")) {
                    r.next();
                    out("reads its write", r.getString(1));
                }
                // A statement made named (S_n) on the primary, where the reads right after the
                // write ran, then used in a read-only transaction once the standby has caught
                // up: it is parsed there too.
                try (PreparedStatement q = c.prepareStatement("SELECT name, inet_server_port() FROM jd WHERE id = ?")) {
                    Set<Integer> at = new TreeSet<>();
                    for (int i = 0; i < 6; i++) {
                        q.setInt(1, 3000);
                        try (ResultSet r = q.executeQuery()) {
                            r.next();
                            out("after write", i, r.getString(1));
                            at.add(r.getInt(2));
                        }
                    }
                    route("after write", at);
                    Thread.sleep(proxied ? 1500 : 0);
                    c.setReadOnly(true);
                    c.setAutoCommit(false);
                    q.setInt(1, 3000);
                    try (ResultSet r = q.executeQuery()) {
                        r.next();
                        out("read-only tx, statement from the primary", r.getString(1));
                        route("later read-only tx", r.getInt(2));
                    }
                    c.commit();
                    c.setAutoCommit(true);
                    c.setReadOnly(false);
                }
            }
            // A query timeout: pgjdbc cancels it with a CancelRequest.
            try (Statement s = c.createStatement()) {
                s.setQueryTimeout(1);
                s.executeQuery("SELECT pg_sleep(30)");
                out("not cancelled");
            } catch (SQLException e) {
                out("timeout", e.getSQLState());
            }
            try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("SELECT 'alive'")) {
                r.next();
                out("after cancel", r.getString(1));
            }
            // setTransactionIsolation: SET SESSION CHARACTERISTICS through the extended
            // protocol, replayed on every node; reads stay balanced, except SERIALIZABLE ones
            // (a hot standby refuses them).
            Thread.sleep(proxied ? 1500 : 0);
            for (int level : new int[] {Connection.TRANSACTION_REPEATABLE_READ, Connection.TRANSACTION_SERIALIZABLE}) {
                c.setTransactionIsolation(level);
                Set<Integer> at = new TreeSet<>();
                for (int i = 0; i < 3; i++) {
                    try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("SELECT current_setting('transaction_isolation'), inet_server_port()")) {
                        r.next();
                        out("isolation", level, r.getString(1));
                        at.add(r.getInt(2));
                    }
                }
                route(level == Connection.TRANSACTION_SERIALIZABLE ? "serializable reads" : "repeatable read reads", at);
            }
            c.setTransactionIsolation(Connection.TRANSACTION_READ_COMMITTED);
            // The catalog, through DatabaseMetaData.
            try (ResultSet r = c.getMetaData().getColumns(null, "public", "jd", null)) {
                List<String> cols = new ArrayList<>();
                while (r.next()) cols.add(r.getString("COLUMN_NAME") + ":" + r.getString("TYPE_NAME"));
                out("columns", cols);
            }
        }
        // targetServerType=primary (Spring and Hikari multi-host URLs): pgjdbc asks
        // SHOW transaction_read_only, which a standby answers "on"; through pgwarden a session
        // writes to the primary, so every connection must be taken for one.
        int taken = 0, refused = 0;
        for (int i = 0; i < 12; i++) {
            Properties p = new Properties();
            p.setProperty("user", "postgres");
            p.setProperty("password", password);
            p.setProperty("targetServerType", "primary");
            try (Connection c = DriverManager.getConnection("jdbc:postgresql://127.0.0.1:" + port + "/" + db, p)) {
                taken++;
            } catch (SQLException e) {
                refused++;
            }
        }
        out("targetServerType=primary", taken, refused);
        out("done");
    }

    static void route(Object... parts) {
        Object[] all = new Object[parts.length + 1];
        all[0] = "route";
        System.arraycopy(parts, 0, all, 1, parts.length);
        out(all);
    }
}
