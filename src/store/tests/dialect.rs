//! The query fragments of `store::dialect`, written out for each database.

use super::Dialect;

#[test]
fn fragments_are_written_out_for_each_database() {
    let text = "SELECT {ms created_at} AS created_at FROM t WHERE id = {uuid $1} AND at < {ts $2}
         ORDER BY {binary name}, {pos} {limit $3} {for_update}";
    assert_eq!(
        Dialect::Postgres.expand(text),
        "SELECT to_ms(created_at) AS created_at FROM t WHERE id = $1::uuid AND at < from_ms($2)
         ORDER BY name COLLATE \"C\", pos LIMIT $3 FOR UPDATE"
    );
    assert_eq!(
        Dialect::Sqlite.expand(text),
        "SELECT created_at AS created_at FROM t WHERE id = $1 AND at < $2
         ORDER BY name, rowid LIMIT ($3 + 0) "
    );
}

#[test]
fn rows_given_as_json_are_read_field_by_field() {
    let text = "SELECT {field 0 text}, {field 1 ts}, {field 2 bool} FROM {rows $1} ORDER BY r.key";
    assert_eq!(
        Dialect::Postgres.expand(text),
        "SELECT (r.value ->> 0), from_ms((r.value ->> 1)::bigint), (r.value ->> 2)::boolean \
         FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS r(value, key) ORDER BY r.key"
    );
    assert_eq!(
        Dialect::Sqlite.expand(text),
        "SELECT (r.value ->> 0), (r.value ->> 1), (r.value ->> 2) FROM json_each($1) AS r ORDER BY r.key"
    );
}

#[test]
#[should_panic(expected = "no SQL fragment `{field 0 date}`")]
fn a_field_of_an_unknown_type_is_a_mistake() {
    Dialect::Sqlite.expand("SELECT {field 0 date} FROM {rows $1}");
}

#[test]
#[should_panic(expected = "no SQL fragment `{time $1}`")]
fn an_unknown_fragment_is_a_mistake() {
    Dialect::Sqlite.expand("SELECT {time $1}");
}

#[test]
#[should_panic(expected = "no SQL fragment `{ts}`")]
fn a_fragment_without_its_argument_is_a_mistake() {
    Dialect::Postgres.expand("SELECT {ts}");
}
