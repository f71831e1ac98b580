#!/usr/bin/env python3
"""Compares the SQLite schema (migrations/*.sql) with the PostgreSQL one (migrations/postgres/).

    scripts/compare_schemas.py [--apply] [PG_URL]      (PG_URL defaults to $METAFORA_PG_URL)

The SQLite side is built in memory by applying migrations/*.sql in order (python's sqlite3).
The PostgreSQL side is read with psql from PG_URL; --apply first applies migrations/postgres/*.sql
there (psql -v ON_ERROR_STOP=1, one transaction per file), so use a fresh database.

Checked per table: table set, column names and order, types (INTEGER=bigint, REAL=double
precision, TEXT=text, BLOB=bytea), nullability, defaults, AUTOINCREMENT=identity, primary key
columns, foreign keys, UNIQUE constraints, named indexes, CHECK constraints (count and their
string literals). Accepted differences: PostgreSQL's extra `rowid` identity column (it stands in
for SQLite's implicit rowid), and primary key columns count as NOT NULL on both sides (SQLite
lets a non-INTEGER PRIMARY KEY hold NULL, PostgreSQL does not). Exits 1 on any difference.
"""
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TYPES = {"INTEGER": "bigint", "REAL": "double precision", "TEXT": "text", "BLOB": "bytea"}
FK_ACTIONS = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}


def check_clauses(sql):
    """The CHECK (...) bodies of a CREATE TABLE statement, parentheses matched."""
    out = []
    for m in re.finditer(r"\bCHECK\s*\(", sql, re.I):
        depth, i = 1, m.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(sql[i], 0)
            i += 1
        out.append(sql[m.end():i - 1])
    return out


def literals(exprs):
    return sorted(lit for e in exprs for lit in re.findall(r"'([^']*)'", e))


def sqlite_schema():
    db = sqlite3.connect(":memory:")
    for f in sorted((ROOT / "migrations").glob("*.sql")):
        db.executescript(f.read_text())
    schema = {}
    for name, sql in db.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"):
        cols = db.execute(f"PRAGMA table_info({name})").fetchall()  # cid name type notnull dflt pk
        autoinc = "AUTOINCREMENT" in sql.upper()
        t = {
            "columns": [(c[1], TYPES.get(c[2].upper(), "?" + c[2]), bool(c[3] or c[5]), c[4],
                         autoinc and c[5] == 1) for c in cols],
            "pk": [c[1] for c in sorted(cols, key=lambda c: c[5]) if c[5]],
            "fks": set(), "unique": set(), "indexes": set(),
        }
        fks = {}
        for fid, _seq, ref, frm, to, on_upd, on_del, _match in db.execute(
                f"PRAGMA foreign_key_list({name})"):
            fks.setdefault(fid, [ref, [], [], on_upd, on_del])
            fks[fid][1].append(frm)
            fks[fid][2].append(to)
        t["fks"] = {(tuple(a), ref, tuple(b), u, d) for ref, a, b, u, d in fks.values()}
        for _seq, iname, unique, origin, _partial in db.execute(f"PRAGMA index_list({name})"):
            icols = tuple(r[2] for r in db.execute(f"PRAGMA index_info({iname})"))
            if origin == "u":
                t["unique"].add(icols)
            elif origin == "c":
                t["indexes"].add((iname, icols, bool(unique)))
        checks = check_clauses(sql)
        t["checks"] = (len(checks), literals(checks))
        schema[name] = t
    return schema


def psql(url, query):
    out = subprocess.run(["psql", "-X", "-q", "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1",
                          "-d", url, "-c", query], check=True, capture_output=True, text=True)
    return [line.split("\t") for line in out.stdout.splitlines() if line]


def pg_schema(url):
    pub = "JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'"
    schema = {}
    for tbl, name, typ, notnull, dflt, ident in psql(url, f"""
            SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                   coalesce(pg_get_expr(d.adbin, d.adrelid), ''), a.attidentity
            FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid {pub}
            LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
            WHERE c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
              AND c.relname NOT LIKE '\\_sqlx%'
            ORDER BY c.relname, a.attnum"""):
        t = schema.setdefault(tbl, {"columns": [], "pk": [], "fks": set(), "unique": set(),
                                    "indexes": set(), "checks": []})
        if name == "rowid":  # the explicit stand-in for SQLite's implicit rowid
            continue
        dflt = re.sub(r"::(text|bigint|integer|double precision)$", "", dflt) or None
        t["columns"].append((name, typ, notnull == "t", dflt, ident != ""))
    # Constraints: p(rimary), f(oreign), u(nique), c(heck); columns in key order.
    for tbl, ctype, cols, ref, refcols, upd, dele, cdef in psql(url, f"""
            SELECT c.relname, k.contype,
                   (SELECT string_agg(a.attname, ',' ORDER BY o) FROM unnest(k.conkey)
                      WITH ORDINALITY u(n, o) JOIN pg_attribute a ON a.attrelid = k.conrelid
                      AND a.attnum = u.n),
                   coalesce(r.relname, ''),
                   coalesce((SELECT string_agg(a.attname, ',' ORDER BY o) FROM unnest(k.confkey)
                      WITH ORDINALITY u(n, o) JOIN pg_attribute a ON a.attrelid = k.confrelid
                      AND a.attnum = u.n), ''),
                   k.confupdtype, k.confdeltype, pg_get_constraintdef(k.oid)
            FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid {pub}
            LEFT JOIN pg_class r ON r.oid = k.confrelid
            WHERE c.relname NOT LIKE '\\_sqlx%'"""):
        t = schema[tbl]
        if ctype == "p":
            t["pk"] = cols.split(",")
        elif ctype == "f":
            t["fks"].add((tuple(cols.split(",")), ref, tuple(refcols.split(",")),
                          FK_ACTIONS[upd], FK_ACTIONS[dele]))
        elif ctype == "u":
            t["unique"].add(tuple(cols.split(",")))
        elif ctype == "c":
            t["checks"].append(cdef)
    for t in schema.values():
        t["checks"] = (len(t["checks"]), literals(t["checks"]))
    # Indexes not backing a constraint (i.e. the CREATE INDEX ones).
    for tbl, iname, unique, cols in psql(url, f"""
            SELECT c.relname, i.relname, x.indisunique,
                   (SELECT string_agg(a.attname, ',' ORDER BY o) FROM unnest(x.indkey::int2[])
                      WITH ORDINALITY u(n, o) JOIN pg_attribute a ON a.attrelid = x.indrelid
                      AND a.attnum = u.n)
            FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
            JOIN pg_class c ON c.oid = x.indrelid {pub}
            WHERE c.relname NOT LIKE '\\_sqlx%'
              AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid)"""):
        schema[tbl]["indexes"].add((iname, tuple(cols.split(",")), unique == "t"))
    return schema


def main():
    args = sys.argv[1:]
    apply = "--apply" in args
    args = [a for a in args if a != "--apply"]
    url = args[0] if args else os.environ.get("METAFORA_PG_URL")
    if not url:
        sys.exit("compare_schemas.py: give PG_URL or set METAFORA_PG_URL")
    if apply:
        for f in sorted((ROOT / "migrations" / "postgres").glob("*.sql")):
            print(f"applying {f.relative_to(ROOT)}")
            subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-d", url,
                            "-f", str(f)], check=True)
    lite, pg = sqlite_schema(), pg_schema(url)
    diffs = []
    if set(lite) != set(pg):
        diffs.append(f"tables only in SQLite: {sorted(set(lite) - set(pg))}, "
                     f"only in PostgreSQL: {sorted(set(pg) - set(lite))}")
    for tbl in sorted(set(lite) & set(pg)):
        a, b = lite[tbl], pg[tbl]
        names_a, names_b = [c[0] for c in a["columns"]], [c[0] for c in b["columns"]]
        if names_a != names_b:
            diffs.append(f"{tbl}: columns differ\n  sqlite: {names_a}\n  pg:     {names_b}")
        else:
            for ca, cb in zip(a["columns"], b["columns"]):
                if ca != cb:
                    diffs.append(f"{tbl}.{ca[0]}: (name, type, not null, default, identity)"
                                 f"\n  sqlite: {ca}\n  pg:     {cb}")
        for key in ("pk", "fks", "unique", "indexes", "checks"):
            if a[key] != b[key]:
                diffs.append(f"{tbl}: {key} differ\n  sqlite: {a[key]}\n  pg:     {b[key]}")
    for d in diffs:
        print("DIFF", d)
    cols = sum(len(t["columns"]) for t in lite.values())
    print(f"{len(lite)} tables, {cols} columns compared: "
          + (f"{len(diffs)} difference(s)" if diffs else "schemas match"))
    sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    main()
