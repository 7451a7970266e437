"""The provider's Airflow plugin: the "Batched migrations" page in the Airflow UI."""
