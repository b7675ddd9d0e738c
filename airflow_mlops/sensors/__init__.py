"""sensors of airflow-mlops."""
