"""The document table: what a datastore holds, in SQLite or PostgreSQL.

    base       DocumentTable, the one interface; every query is written there once
    schema     the SQL schema both databases share
    records    DocumentRecord (a row) and TableSnapshot (the table as columns)
    sqlite     SqliteTable: a WAL-mode file in the datastore folder (the default)
    postgres   PostgresTable: a schema in a PostgreSQL database shared by replicas
    factory    which of the two a datastore uses (`SILO_DATABASE_URL`), and opening it
"""
