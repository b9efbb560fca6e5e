-- The postgres image creates POSTGRES_DB (airflow) owned by POSTGRES_USER (vasp); MLflow gets its own DB.
CREATE DATABASE mlflow OWNER vasp;
