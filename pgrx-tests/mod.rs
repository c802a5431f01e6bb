//! In-database tests (`cargo pgrx test`): each runs in a rolled-back transaction.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn smoke() {
        Spi::run("CREATE TABLE t (id int PRIMARY KEY, v text)").unwrap();
        Spi::run("SELECT audit.enable('t')").unwrap();
        Spi::run("INSERT INTO t VALUES (1, 'a')").unwrap();
        let n = Spi::get_one::<i64>("SELECT count(*) FROM audit.events WHERE action = 'INSERT'").unwrap();
        assert_eq!(n, Some(1));
    }
}
