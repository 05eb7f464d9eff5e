-- Nothing on plain PostgreSQL: the TimescaleDB flavor sets its compression ordering.
SELECT 1;
