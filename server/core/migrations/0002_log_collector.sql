-- kind: expand
-- The log API filters by program alone (the dashboard's program picker); the
-- (instance, program, ts) index of 0001 only serves that with an instance too.
CREATE INDEX logs_program_ts ON logs (program, ts DESC);
