//! Reading what PostgreSQL's tools print: `pg_controldata`, `pg_ctl status`, and the progress
//! lines of `pg_basebackup` and `pg_rewind`. Pure functions over text, so they are tested on
//! the tools' real output. The tools run with `LC_ALL=C` / `LC_MESSAGES=C`: labels are the
//! English ones.

use crate::api::ControlData;

/// The fields of `pg_controldata` output the warden decides with.
pub fn controldata(text: &str) -> Result<ControlData, String> {
    let mut state = None;
    let mut timeline = None;
    let mut checkpoint = None;
    let mut sysid = None;
    for line in text.lines() {
        let Some((label, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match label.trim() {
            "Database cluster state" => state = Some(value.to_string()),
            "Latest checkpoint's TimeLineID" => {
                timeline = Some(value.parse::<u32>().map_err(|_| {
                    format!("pg_controldata: \"Latest checkpoint's TimeLineID\" is {value:?}, not a number")
                })?)
            }
            "Latest checkpoint location" => checkpoint = Some(value.to_string()),
            "Database system identifier" => sysid = Some(value.to_string()),
            _ => {}
        }
    }
    let missing = |what: &str| format!("pg_controldata printed no \"{what}\" line");
    Ok(ControlData {
        state: state.ok_or_else(|| missing("Database cluster state"))?,
        timeline: timeline.ok_or_else(|| missing("Latest checkpoint's TimeLineID"))?,
        checkpoint_lsn: checkpoint.ok_or_else(|| missing("Latest checkpoint location"))?,
        system_identifier: sysid.ok_or_else(|| missing("Database system identifier"))?,
    })
}

/// The postmaster's pid from `pg_ctl status` output ("pg_ctl: server is running (PID: 123)").
pub fn pg_ctl_pid(text: &str) -> Option<u32> {
    let start = text.find("(PID: ")? + "(PID: ".len();
    let rest = &text[start..];
    let end = rest.find(')')?;
    rest[..end].trim().parse().ok()
}

/// One line of a tool's output, as the job's progress sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// `12345/67890 kB (18%), 0/1 tablespace …` (pg_basebackup) or
    /// `12345/67890 kB (18%) copied` (pg_rewind): bytes done and total.
    Progress {
        done: u64,
        total: Option<u64>,
    },
    /// `pg_basebackup: checkpoint completed`: what the tool does now.
    Step(String),
    Other,
}

/// Classifies one line (already split on `\r` and `\n`).
pub fn line(text: &str) -> Line {
    let t = text.trim();
    if let Some(p) = progress(t) {
        return p;
    }
    for tool in ["pg_basebackup: ", "pg_rewind: "] {
        if let Some(msg) = t.strip_prefix(tool) {
            let msg = msg.trim();
            // Errors and warnings go to the tail and the error, not the step.
            if msg.starts_with("error:") || msg.starts_with("warning:") || msg.starts_with("hint:")
            {
                return Line::Other;
            }
            return Line::Step(msg.to_string());
        }
    }
    Line::Other
}

fn progress(t: &str) -> Option<Line> {
    // "<done>/<total> kB (<pct>%)…"; the numbers are right-aligned, so leading spaces are fine.
    let (numbers, rest) = t.split_once(" kB (")?;
    if !rest.contains("%)") {
        return None;
    }
    let (done, total) = numbers.trim().split_once('/')?;
    let done: u64 = done.trim().parse().ok()?;
    // pg_basebackup prints "?" as the total when it could not estimate it.
    let total = total.trim().parse::<u64>().ok();
    Some(Line::Progress {
        done: done.saturating_mul(1024),
        total: total.map(|t| t.saturating_mul(1024)),
    })
}

/// Splits a chunk of output into complete lines on `\r` and `\n` (progress reports end in
/// `\r` on a terminal); what follows the last separator stays in `pending` for the next chunk.
/// Bytes, not text: a chunk may end inside a UTF-8 character.
pub fn split_lines(pending: &mut Vec<u8>, chunk: &[u8]) -> Vec<String> {
    pending.extend_from_slice(chunk);
    let mut out = Vec::new();
    while let Some(i) = pending.iter().position(|b| *b == b'\r' || *b == b'\n') {
        let line = String::from_utf8_lossy(&pending[..i]).into_owned();
        pending.drain(..=i);
        if !line.trim().is_empty() {
            out.push(line);
        }
    }
    // A line without an end that grows without bound is cut (a tool printing garbage).
    if pending.len() > MAX_LINE {
        out.push(String::from_utf8_lossy(&pending[..MAX_LINE]).into_owned());
        pending.clear();
    }
    out
}

/// The longest line kept whole.
pub const MAX_LINE: usize = 8192;

#[cfg(test)]
mod tests {
    use super::*;

    /// `pg_controldata` of a freshly initdb'd PostgreSQL 15 cluster, as printed.
    const SHUT_DOWN: &str = "\
pg_control version number:            1300
Catalog version number:               202209061
Database system identifier:           7710894297231200283
Database cluster state:               shut down
pg_control last modified:             Sun Nov 22 07:28:02 2026
Latest checkpoint location:           0/1500718
Latest checkpoint's REDO location:    0/1500718
Latest checkpoint's REDO WAL file:    000000010000000000000001
Latest checkpoint's TimeLineID:       1
Latest checkpoint's PrevTimeLineID:   1
Latest checkpoint's full_page_writes: on
Latest checkpoint's NextXID:          0:724
Latest checkpoint's NextOID:          13572
Latest checkpoint's NextMultiXactId:  1
Latest checkpoint's NextMultiOffset:  0
Latest checkpoint's oldestXID:        716
Latest checkpoint's oldestXID's DB:   1
Latest checkpoint's oldestActiveXID:  0
Latest checkpoint's oldestMultiXid:   1
Latest checkpoint's oldestMulti's DB: 1
Latest checkpoint's oldestCommitTsXid:0
Latest checkpoint's newestCommitTsXid:0
Time of latest checkpoint:            Sun Nov 22 07:28:02 2026
Fake LSN counter for unlogged rels:   0/3E8
Minimum recovery ending location:     0/0
Min recovery ending loc's timeline:   0
Backup start location:                0/0
Backup end location:                  0/0
End-of-backup record required:        no
wal_level setting:                    replica
wal_log_hints setting:                off
max_connections setting:              100
max_worker_processes setting:         8
max_wal_senders setting:              10
max_prepared_xacts setting:           0
max_locks_per_xact setting:           64
track_commit_timestamp setting:       off
Maximum data alignment:               8
Database block size:                  8192
Blocks per segment of large relation: 131072
WAL block size:                       8192
Bytes per WAL segment:                16777216
Maximum length of identifiers:        64
Maximum columns in an index:          32
Maximum size of a TOAST chunk:        1996
Size of a large-object chunk:         2048
Date/time type storage:               64-bit integers
Float8 argument passing:              by value
Data page checksum version:           0
Mock authentication nonce:            c1de835fe862d3e1a498655b01db8da05bdc281732693f565924c927273dc7b9
";

    /// The head of a running standby's `pg_controldata` after a rewind onto timeline 2.
    const IN_RECOVERY: &str = "\
pg_control version number:            1300
Catalog version number:               202209061
Database system identifier:           7710895290238950490
Database cluster state:               in archive recovery
pg_control last modified:             Sun Nov 22 07:32:07 2026
Latest checkpoint location:           0/4018D10
Latest checkpoint's REDO location:    0/4018D10
Latest checkpoint's REDO WAL file:    000000020000000000000004
Latest checkpoint's TimeLineID:       2
Latest checkpoint's PrevTimeLineID:   2
";

    #[test]
    fn controldata_of_a_shut_down_cluster() {
        assert_eq!(
            controldata(SHUT_DOWN).unwrap(),
            ControlData {
                state: "shut down".into(),
                timeline: 1,
                checkpoint_lsn: "0/1500718".into(),
                system_identifier: "7710894297231200283".into(),
            }
        );
    }

    #[test]
    fn controldata_of_a_standby_on_timeline_2() {
        let c = controldata(IN_RECOVERY).unwrap();
        assert_eq!(c.state, "in archive recovery");
        assert_eq!(c.timeline, 2);
        assert_eq!(c.checkpoint_lsn, "0/4018D10");
    }

    #[test]
    fn controldata_that_is_not() {
        let e = controldata("pg_controldata: error: could not open file").unwrap_err();
        assert!(e.contains("Database cluster state"), "{e}");
        let e = controldata(&SHUT_DOWN.replace("TimeLineID:       1", "TimeLineID:       x"))
            .unwrap_err();
        assert!(e.contains("not a number"), "{e}");
        assert!(controldata("").is_err());
    }

    #[test]
    fn pg_ctl_status_pid() {
        let text = "pg_ctl: server is running (PID: 15951)\n/usr/lib/postgresql/15/bin/postgres \"-D\" \"/d\"\n";
        assert_eq!(pg_ctl_pid(text), Some(15951));
        assert_eq!(pg_ctl_pid("pg_ctl: no server running\n"), None);
        assert_eq!(pg_ctl_pid("(PID: x)"), None);
    }

    #[test]
    fn progress_lines_of_both_tools() {
        // pg_basebackup --progress --verbose, as printed into a pipe.
        assert_eq!(
            line("22953/22953 kB (100%), 0/1 tablespace (s/global/pg_control                )"),
            Line::Progress {
                done: 22953 * 1024,
                total: Some(22953 * 1024)
            }
        );
        assert_eq!(
            line("    0/22953 kB (0%), 0/1 tablespace                                         "),
            Line::Progress {
                done: 0,
                total: Some(22953 * 1024)
            }
        );
        // pg_rewind --progress.
        assert_eq!(
            line("53045/53045 kB (100%) copied"),
            Line::Progress {
                done: 53045 * 1024,
                total: Some(53045 * 1024)
            }
        );
        // An estimate pg_basebackup could not make.
        assert_eq!(
            line("1024/? kB (?%), 0/1 tablespace"),
            Line::Progress {
                done: 1024 * 1024,
                total: None
            }
        );
    }

    #[test]
    fn steps_and_other_lines() {
        assert_eq!(
            line("pg_basebackup: initiating base backup, waiting for checkpoint to complete"),
            Line::Step("initiating base backup, waiting for checkpoint to complete".into())
        );
        assert_eq!(
            line("pg_rewind: servers diverged at WAL location 0/4000000 on timeline 1"),
            Line::Step("servers diverged at WAL location 0/4000000 on timeline 1".into())
        );
        assert_eq!(
            line("pg_rewind: error: could not connect to server"),
            Line::Other
        );
        assert_eq!(
            line("2026-11-22 07:32:07.729 UTC [15951] LOG:  redo starts at 0/3000028"),
            Line::Other
        );
        assert_eq!(line("kB (5%) of nothing"), Line::Other);
    }

    #[test]
    fn lines_split_on_cr_and_lf_across_chunks() {
        let mut pending = Vec::new();
        assert_eq!(
            split_lines(&mut pending, b"10/100 kB (10%)\r20/100 kB (20%)\r30/1"),
            ["10/100 kB (10%)", "20/100 kB (20%)"]
        );
        assert_eq!(pending, b"30/1");
        assert_eq!(
            split_lines(
                &mut pending,
                b"00 kB (30%)\r\npg_basebackup: base backup completed\n"
            ),
            ["30/100 kB (30%)", "pg_basebackup: base backup completed"]
        );
        assert!(pending.is_empty());
        // A character split between two chunks survives.
        assert!(split_lines(&mut pending, &"é".as_bytes()[..1]).is_empty());
        assert_eq!(split_lines(&mut pending, &[0xa9, b'\n']), ["é"]);
        let long = "x".repeat(9000);
        let out = split_lines(&mut pending, long.as_bytes());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), 8192);
    }
}
