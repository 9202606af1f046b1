-- Run once by the postgres image on an empty volume: the stack's three databases.
CREATE DATABASE mlflow;
CREATE DATABASE mlflow_auth;
CREATE DATABASE prefect;
