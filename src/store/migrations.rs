//! The truth store's migrations, embedded with `include_str!` and handed to sqlx's `Migrator`.
//!
//! Why not `sqlx::migrate!`: that macro is sqlx's only use of its `macros` feature here, and the
//! feature builds a second copy of sqlx-postgres, sqlx-sqlite, SQLite's C sources and tokio for
//! the compiler (the proc-macro host), about 200 s of CPU in a clean build on 2 cores
//! (`cargo build --timings`, BENCHMARKS.md "CI"). The files, versions and checksums are the
//! same: sqlx checksums the SQL text, so databases migrated by earlier builds are recognized.
//! A new migration is a file in both directories and a line in both lists below (a unit test
//! checks the lists against the directories).

use std::borrow::Cow;
use std::sync::LazyLock;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::SqlSafeStr;

/// (version, file name without the version and `.sql`, SQL).
type Embedded = (i64, &'static str, &'static str);

const SQLITE: &[Embedded] = &[
    (
        1,
        "truth_store",
        include_str!("../../migrations/sqlite/0001_truth_store.sql"),
    ),
    (2, "job_runs", include_str!("../../migrations/sqlite/0002_job_runs.sql")),
    (
        3,
        "memory_passes",
        include_str!("../../migrations/sqlite/0003_memory_passes.sql"),
    ),
    (
        4,
        "drift_repeats",
        include_str!("../../migrations/sqlite/0004_drift_repeats.sql"),
    ),
];

const POSTGRES: &[Embedded] = &[
    (
        1,
        "truth_store",
        include_str!("../../migrations/postgres/0001_truth_store.sql"),
    ),
    (
        2,
        "job_runs",
        include_str!("../../migrations/postgres/0002_job_runs.sql"),
    ),
    (
        3,
        "memory_passes",
        include_str!("../../migrations/postgres/0003_memory_passes.sql"),
    ),
    (
        4,
        "drift_repeats",
        include_str!("../../migrations/postgres/0004_drift_repeats.sql"),
    ),
];

fn migrator(embedded: &[Embedded]) -> Migrator {
    Migrator::with_migrations(
        embedded
            .iter()
            .map(|(version, name, sql)| {
                // As `migrate!` describes them: the file name's words.
                let description = Cow::Owned(name.replace('_', " "));
                Migration::new(
                    *version,
                    description,
                    MigrationType::Simple,
                    sqlx::AssertSqlSafe(*sql).into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

pub static SQLITE_MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| migrator(SQLITE));
pub static POSTGRES_MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| migrator(POSTGRES));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_embedded_in_order() {
        for (engine, embedded) in [("sqlite", SQLITE), ("postgres", POSTGRES)] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(engine);
            let mut files: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|name| name.ends_with(".sql"))
                .collect();
            files.sort();
            let listed: Vec<String> = embedded
                .iter()
                .map(|(version, name, _)| format!("{version:04}_{name}.sql"))
                .collect();
            assert_eq!(
                listed, files,
                "{engine}: add the new migration to src/store/migrations.rs"
            );
            for (version, name, sql) in embedded {
                let on_disk = std::fs::read_to_string(dir.join(format!("{version:04}_{name}.sql"))).unwrap();
                assert_eq!(*sql, on_disk);
            }
        }
    }

    #[test]
    fn checksums_are_sqlx_own_of_the_file_text() {
        // What `migrate!` computed for migration 1 (SHA-384 of the file): a database migrated
        // by an earlier build accepts this one.
        let migration = &SQLITE_MIGRATOR.iter().next().unwrap();
        assert_eq!(migration.version, 1);
        assert_eq!(migration.description, "truth store");
        use sha2::Digest;
        let expected = sha2::Sha384::digest(SQLITE[0].2.as_bytes());
        assert_eq!(&migration.checksum[..], &expected[..]);
    }
}
