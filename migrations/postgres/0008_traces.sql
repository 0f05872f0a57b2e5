-- Traces (SPEC §10): a job keeps the `traceparent` of the work that queued it (its event's
-- span), so whichever replica pushes it joins that trace; a log entry keeps its trace id.
ALTER TABLE jobs ADD COLUMN trace_context text;
ALTER TABLE provisioning_logs ADD COLUMN trace_id text;
