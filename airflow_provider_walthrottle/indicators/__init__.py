"""Health indicators: the signals the gate evaluates before and between a migration's batches.

Each one stands behind its own feature flag (an Airflow Variable, off until rolled out):

=====================================  ===========================================================
indicator                              stops when
=====================================  ===========================================================
WAL archival backlog                   more WAL segments wait for ``archive_command`` than allowed
replication lag                        a streaming standby replays too late or too far behind
replication slot retention             a slot retains too much WAL, or is about to lose it
autovacuum on the migrated table       an autovacuum worker is processing the table
=====================================  ===========================================================
"""
