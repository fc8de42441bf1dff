"""The document table: what a datastore holds, in SQLite or PostgreSQL.

    base       DocumentTable, the one interface; every query is written there once,
               or in one of its parts:
    core         TableCore, what an implementation provides (connection, transactions)
    shared_index   the state of a kNN index shared by replicas
    history      the transparency log's start, outside changes, the audit log
    schema     the SQL schema both databases share
    records    DocumentRecord (a row) and TableSnapshot (the table as columns)
    sqlite     SqliteTable: a WAL-mode file in the datastore folder (the default)
    postgres   PostgresTable: a schema in a PostgreSQL database shared by replicas
    factory    which of the two a datastore uses (`SILO_DATABASE_URL`), and opening it
"""
