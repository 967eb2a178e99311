"""The migration lint: no expand migration takes a long exclusive lock on a table that already exists.

An expand migration is applied while the previous release serves (docs/architecture.md,
Migrations), so a statement that locks a big table for the length of a scan, a rewrite or an
index build stops every request on it. The lint reads every file in server/core/migrations/
and names each such statement; it is proved by bad samples, each of which it must catch.
"""

import re

import pytest

from server.core import migrations

# What a statement does wrong, by rule: (pattern on the statement's bare text, what to say).
# `{table}` is the table the statement works on; rules marked * apply only to a table that
# existed before the file (one the same file creates is empty, so nothing waits on it).
RULES = {
    "create-index": "CREATE INDEX without CONCURRENTLY on the existing table {table} (a SHARE lock: no writes "
                    "until the index is built); use CREATE INDEX CONCURRENTLY IF NOT EXISTS in a file of its own",
    "constraint-index": "ADD UNIQUE or PRIMARY KEY on the existing table {table} builds an index under an exclusive "
                        "lock; build it CONCURRENTLY first and add the constraint USING INDEX",
    "volatile-default": "ADD COLUMN with a volatile default (or serial, identity, generated) on the existing table "
                        "{table} rewrites it under an exclusive lock; add it nullable, fill it in batches",
    "not-null-column": "ADD COLUMN NOT NULL without a default on the existing table {table}: the previous "
                       "release's writers do not fill it",
    "type-change": "ALTER COLUMN TYPE on the existing table {table} rewrites it under an exclusive lock (and changes "
                   "its meaning): a new column instead, the old one dropped by a contract migration",
    "set-not-null": "SET NOT NULL on the existing table {table} scans it under an exclusive lock, and the previous "
                    "release may write NULL: a CHECK (... IS NOT NULL) NOT VALID, validated later, or a contract migration",
    "validate-constraint": "ADD CHECK or FOREIGN KEY without NOT VALID on the existing table {table} scans it under "
                           "lock; add it NOT VALID, then VALIDATE CONSTRAINT",
    "drop": "DROP (or TRUNCATE) in an expand migration: the previous release may still use {table}; "
            "that is a contract migration",
    "rename": "RENAME in an expand migration: the previous release still uses the old name of {table}; "
              "that is a contract migration",
    "trigger-toggle": "DISABLE/ENABLE TRIGGER on the existing table {table} blocks its writers until the migration "
                      "commits",
    "whole-table-write": "UPDATE or DELETE without WHERE on the existing table {table} locks every row until "
                         "the migration commits; fill it in batches",
    "rewrite": "{table}: a statement that rewrites or locks a whole table (VACUUM FULL, CLUSTER, REINDEX, LOCK, "
               "SET LOGGED, SET TABLESPACE)",
    "lock-timeout": "a migration sets lock_timeout itself; the runner sets it for every statement "
                    "(AYON_MIGRATION_LOCK_TIMEOUT)",
}
NAME = r'("[^"]+"|[\w.]+)'
VOLATILE = re.compile(r"\b(RANDOM|GEN_RANDOM_UUID|UUID_GENERATE_V\d\w*|CLOCK_TIMESTAMP|TIMEOFDAY|NEXTVAL|TXID_CURRENT)"
                      r"\s*\(|\b(SMALLSERIAL|BIGSERIAL|SERIAL)\b|\bGENERATED\b")

# Found in the migrations applied in the field before the lint and the kinds existed (0001-0005):
# they cannot change now (their checksums are in every database). They are expand by meaning
# (the release before each worked on its result) but were heavy on a big table. No later
# file may be added here: a finding in a new migration is fixed in the migration.
FIELD = {
    "0002_log_collector.sql: create-index logs",
    "0004_event_documents.sql: trigger-toggle events",
    "0004_event_documents.sql: whole-table-write events",
    "0004_event_documents.sql: set-not-null events",
    "0005_event_times_z.sql: trigger-toggle events",
    "0005_event_times_z.sql: whole-table-write events",
}
FIELD_LAST = 5


def _table(name: str) -> str:
    return name.strip('"').lower().removeprefix("public.")


def statement_findings(bare: str, new: set[str]) -> list[tuple[str, str]]:
    """(rule, table) for one statement of an expand migration; `new` are the tables its own file creates."""
    found = []
    if re.search(r"\bSET (LOCAL |SESSION )?LOCK_TIMEOUT\b|SET_CONFIG\s*\(\s*'\?'", bare):
        found.append(("lock-timeout", "-"))
    created = re.match(rf"CREATE (?:UNLOGGED )?TABLE (?:IF NOT EXISTS )?{NAME}", bare)
    if created:
        new.add(_table(created[1]))
        return found
    index = re.match(rf"CREATE (?:UNIQUE )?INDEX (CONCURRENTLY )?.*?\bON (?:ONLY )?{NAME}", bare)
    if index:
        if not index[1] and _table(index[2]) not in new:
            found.append(("create-index", _table(index[2])))
        return found
    if re.match(r"(DROP|TRUNCATE)\b", bare) and not re.match(r"DROP INDEX CONCURRENTLY\b", bare):
        what = re.match(rf"(?:DROP \w+(?: \w+)?? (?:IF EXISTS )?|TRUNCATE (?:TABLE )?){NAME}", bare)
        found.append(("drop", _table(what[1]) if what else "?"))
        return found
    if re.match(r"ALTER \w+(?: \w+)?? .*\bRENAME\b", bare):
        found.append(("rename", _table(bare.split()[2])))
    if re.match(r"(VACUUM\b.*\bFULL\b|CLUSTER\b|REINDEX\b(?!.*\bCONCURRENTLY\b)|LOCK\b)", bare):
        found.append(("rewrite", "-"))
    write = re.match(rf"(?:UPDATE (?:ONLY )?{NAME} .*|DELETE FROM (?:ONLY )?{NAME}.*)", bare)
    if write and " WHERE " not in f" {bare} ":
        table = _table(write[1] or write[2])
        if table not in new:
            found.append(("whole-table-write", table))
    altered = re.match(rf"ALTER TABLE (?:IF EXISTS )?(?:ONLY )?{NAME} (.*)", bare)
    if not altered or _table(altered[1]) in new:
        return found
    table, actions = _table(altered[1]), altered[2]
    # Each comma-separated action of the ALTER TABLE (commas inside parentheses belong to the action).
    depth, part, parts = 0, [], []
    for char in actions:
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            parts.append("".join(part).strip())
            part = []
        else:
            part.append(char)
    parts.append("".join(part).strip())
    for action in parts:
        if action.startswith("ADD COLUMN") or (action.startswith("ADD ") and not re.match(
                r"ADD (CONSTRAINT|CHECK|FOREIGN|UNIQUE|PRIMARY|EXCLUDE)\b", action)):
            if VOLATILE.search(action) or "IDENTITY" in action:
                found.append(("volatile-default", table))
            if "NOT NULL" in action and "DEFAULT" not in action:
                found.append(("not-null-column", table))
        elif re.match(r"ADD (CONSTRAINT \S+ )?(UNIQUE|PRIMARY KEY)\b", action) and "USING INDEX" not in action:
            found.append(("constraint-index", table))
        elif re.match(r"ADD (CONSTRAINT \S+ )?(CHECK|FOREIGN KEY|EXCLUDE)\b", action) and "NOT VALID" not in action:
            found.append(("validate-constraint", table))
        elif re.match(r"ALTER (COLUMN )?\S+ (SET DATA )?TYPE\b", action):
            found.append(("type-change", table))
        elif re.match(r"ALTER (COLUMN )?\S+ SET NOT NULL\b", action):
            found.append(("set-not-null", table))
        elif action.startswith("DROP"):
            found.append(("drop", table))
        elif action.startswith("RENAME"):
            found.append(("rename", table))
        elif re.match(r"(DISABLE|ENABLE)( ALWAYS| REPLICA)? TRIGGER\b", action):
            found.append(("trigger-toggle", table))
        elif re.match(r"SET (LOGGED|UNLOGGED|TABLESPACE)\b", action):
            found.append(("rewrite", table))
    return found


def lint(files: list[tuple[str, str]]) -> list[str]:
    """`FILE: rule table` for every finding in the expand migrations among `files` (name, text), in order."""
    findings = []
    for filename, text in files:
        migration = migrations.parse(filename, text)
        if migration.kind != "expand":
            continue  # applied by the contract step, once no older release runs
        new: set[str] = set()
        for statement in migrations.statements(migration.sql):
            for rule, table in statement_findings(statement.bare, new):
                finding = f"{filename}: {rule} {table}"
                if finding not in findings:
                    findings.append(finding)
    return findings


def project_files() -> list[tuple[str, str]]:
    return [(p.name, p.read_text()) for p in sorted(migrations.MIGRATIONS_DIR.glob("*.sql"))]


def explain(finding: str) -> str:
    filename, rest = finding.split(": ", 1)
    rule, table = rest.split(" ", 1)
    return f"{filename}: {RULES[rule].format(table=table)}"


def test_every_migration_passes_the_lint():
    files = project_files()
    assert len(files) == len(migrations.load()) >= 6
    findings = lint(files)
    new = [explain(f) for f in findings if f not in FIELD]
    assert not new, "\n".join(new)
    assert set(findings) == FIELD  # the field's findings are what they were, no fewer, no more
    assert all(int(f[:4]) <= FIELD_LAST for f in FIELD)


BAD = [
    ("CREATE INDEX events_topic2 ON events (topic);", "create-index events"),
    ("CREATE UNIQUE INDEX IF NOT EXISTS logs_x ON ONLY public.logs (ts);", "create-index logs"),
    ("ALTER TABLE events ADD COLUMN token uuid DEFAULT gen_random_uuid();", "volatile-default events"),
    ("ALTER TABLE events ADD COLUMN n bigserial;", "volatile-default events"),
    ("ALTER TABLE events ADD COLUMN r float8 DEFAULT random() NOT NULL;", "volatile-default events"),
    ("ALTER TABLE events ADD COLUMN g text GENERATED ALWAYS AS (topic || '!') STORED;", "volatile-default events"),
    ("ALTER TABLE events ADD COLUMN origin text NOT NULL;", "not-null-column events"),
    ("ALTER TABLE events ALTER COLUMN description TYPE varchar(200);", "type-change events"),
    ("ALTER TABLE events ALTER description SET DATA TYPE text;", "type-change events"),
    ("ALTER TABLE events ALTER COLUMN sender SET NOT NULL;", "set-not-null events"),
    ("ALTER TABLE events ADD CONSTRAINT short CHECK (length(topic) < 100);", "validate-constraint events"),
    ("ALTER TABLE events ADD CONSTRAINT u UNIQUE (topic, sender);", "constraint-index events"),
    ("ALTER TABLE events DROP COLUMN payload;", "drop events"),
    ("DROP TABLE IF EXISTS secrets;", "drop secrets"),
    ("DROP INDEX logs_program_ts;", "drop logs_program_ts"),
    ("TRUNCATE logs;", "drop logs"),
    ("ALTER TABLE events RENAME COLUMN sender TO origin;", "rename events"),
    ("ALTER TABLE events RENAME TO happenings;", "rename events"),
    ("UPDATE events SET description = '';", "whole-table-write events"),
    ("DELETE FROM logs;", "whole-table-write logs"),
    ("ALTER TABLE events DISABLE TRIGGER USER;", "trigger-toggle events"),
    ("LOCK TABLE events IN ACCESS EXCLUSIVE MODE;", "rewrite -"),
    ("VACUUM FULL events;", "rewrite -"),
    ("ALTER TABLE logs SET UNLOGGED;", "rewrite logs"),
    ("SET LOCAL lock_timeout = 0;", "lock-timeout -"),
    # Two actions in one statement: the second one is caught.
    ("ALTER TABLE events ADD COLUMN ok text, ALTER COLUMN topic SET NOT NULL;", "set-not-null events"),
]


@pytest.mark.parametrize("sql, finding", BAD, ids=[b[1] + ": " + b[0][:40] for b in BAD])
def test_the_lint_catches_each_bad_sample(sql, finding):
    files = project_files() + [("9000_bad.sql", f"-- kind: expand\n-- a sample the lint must refuse\n{sql}\n")]
    assert f"9000_bad.sql: {finding}" in lint(files)
    assert explain(f"9000_bad.sql: {finding}").startswith("9000_bad.sql: ")


GOOD = [
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS events_sender ON events (sender);",
    "ALTER TABLE events ADD COLUMN origin text;",
    "ALTER TABLE events ADD COLUMN seen timestamptz DEFAULT now();",
    "ALTER TABLE events ADD COLUMN flag boolean NOT NULL DEFAULT false;",
    "ALTER TABLE events ADD CONSTRAINT short CHECK (length(topic) < 100) NOT VALID;",
    "ALTER TABLE events VALIDATE CONSTRAINT short;",
    "CREATE TABLE fresh (id bigserial PRIMARY KEY, n int NOT NULL);\nCREATE INDEX fresh_n ON fresh (n);\n"
    "ALTER TABLE fresh ALTER COLUMN n TYPE bigint;\nUPDATE fresh SET n = 0;",
    "CREATE OR REPLACE FUNCTION f() RETURNS text LANGUAGE sql AS $$ SELECT 'DROP TABLE events; UPDATE logs' $$;",
    "COMMENT ON COLUMN events.doc IS 'DROP it? RENAME it? no';",
    "UPDATE events SET description = '' WHERE id = '00000000-0000-0000-0000-000000000000';",
    "DROP INDEX CONCURRENTLY IF EXISTS events_sender;",
]


@pytest.mark.parametrize("sql", GOOD, ids=[g[:50] for g in GOOD])
def test_the_lint_lets_expand_statements_through(sql):
    files = project_files() + [("9000_good.sql", f"-- kind: expand\n{sql}\n")]
    assert [f for f in lint(files) if f.startswith("9000")] == []


def test_a_contract_migration_may_do_what_an_expand_one_may_not():
    body = "\n".join(sql for sql, _ in BAD)
    files = project_files() + [("9000_contract.sql", f"-- kind: contract\n{body}\n")]
    assert [f for f in lint(files) if f.startswith("9000")] == []
    assert len([f for f in lint(files[:-1] + [("9000_x.sql", f"-- kind: expand\n{body}\n")]) if f.startswith("9000")]) >= 15
