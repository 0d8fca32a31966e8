//! Teacher stage: generation engine and backends (see the teacher issue; not built yet).
