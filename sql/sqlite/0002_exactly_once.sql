-- runtara schema, version 2 (SQLite): what exactly-once replays need.

-- The sleep whose wake time sleep_until is (PROTOCOL.md 6.4): its checkpoint id.
-- An instance asleep before this version belongs to its latest sleep event.
ALTER TABLE instances ADD COLUMN sleep_checkpoint_id TEXT;
UPDATE instances SET sleep_checkpoint_id = COALESCE(
    (SELECT e.checkpoint_id FROM events e
      WHERE e.instance_id = instances.instance_id AND e.event_type = 'sleep'
      ORDER BY e.event_id DESC LIMIT 1),
    checkpoint_id)
WHERE sleep_until IS NOT NULL;

-- The run (register_instance run_id) that started the instance last: a repeated
-- registration of the same run is not a new start.
ALTER TABLE instances ADD COLUMN run_id TEXT;

-- Custom signals get ids, so that a checkpoint consumes exactly the payload its
-- client received (docs/protocol.md 8.3): every send takes the instance's next id.
ALTER TABLE instances ADD COLUMN last_custom_signal_id INTEGER NOT NULL DEFAULT 0;
ALTER TABLE custom_signals ADD COLUMN signal_id INTEGER NOT NULL DEFAULT 0;
