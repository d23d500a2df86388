-- What the environment keeps about images and launches. Logically identical to
-- migrations/postgres/0003_environment.sql.
-- The file name an image was registered from (order.py, app.tar.gz); '' for older images.
ALTER TABLE images ADD COLUMN filename TEXT NOT NULL DEFAULT '';
-- Wall-clock time the instance's processes have run, summed over launches: the execution
-- timeout counts running time only (not backoff, sleep or pause).
ALTER TABLE instances ADD COLUMN run_time_ms INTEGER NOT NULL DEFAULT 0;
-- Crashed instances now wait out their relaunch backoff suspended with a wake_at_ms, and the
-- wake scheduler claims them like sleepers. instances_wake (status, wake_at_ms) WHERE wake_at_ms
-- IS NOT NULL does not name reasons, so it serves that query unchanged.
