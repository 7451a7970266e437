"""What the tests share: real PostgreSQL clusters, a real Airflow, and helpers over them.

Test modules import from here, never from each other.
"""
