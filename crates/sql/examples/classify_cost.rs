//! Instructions per `classify` of pgbench's select-only query: run under
//! `perf stat -e instructions` with N and 0 as the argument and divide the difference.
fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let mut reads = 0u64;
    for i in 0..n {
        let sql = if i % 2 == 0 {
            "SELECT abalance FROM pgbench_accounts WHERE aid = 81234;"
        } else {
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1234;"
        };
        let v = pgwarden_sql::classify(std::hint::black_box(sql), &pgwarden_sql::NoFunctions);
        reads += u64::from(v.class == pgwarden_sql::Class::Read);
    }
    println!("{reads}");
}
