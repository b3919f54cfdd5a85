"""The triggerflow store (SQLAlchemy Core, SQLite or PostgreSQL).

    schema.py, summaries.py   the tables (one MetaData: metadata.py); types.py: UtcDateTime, BigId
    engines.py                URLs from connection triggers_db, one engine per URL
    migrations.py             create_schema and the additive migrations
    bulk.py, lookups.py       bulk writes (COPY, DriverSession) and set-based look-ups
    guarded.py                short-timeout, bounded access for the API-server plugins
    db.py                     the old address of engines/migrations/bulk/lookups (re-exports)
"""
