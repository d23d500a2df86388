-- Which launch (process) of the instance is running: set when register moves it to running,
-- and required again when that launch re-registers after a reconnect. A launch after a wake or
-- resume keeps the attempt, so the attempt alone cannot tell an old launch from the new one.
ALTER TABLE instances ADD COLUMN launch_id TEXT;
