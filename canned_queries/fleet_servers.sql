-- title: Fleet grid: servers
-- description: One row per server for the fleet grid (GET /api/fleet): liveness state (online, stale, offline, error, maintenance), last report received (UTC epoch s), GPU collection state and message, lost GPUs (JSON), admin status, CPU % and memory bytes; last_ts (newest report's sample time) and gpu_admin_gen (bumped by admin changes to its GPUs) tell the fleet document which servers changed; groups: its host groups, space-separated (null for none).
select
  s.id,
  coalesce(s.display_name, s.hostname) as name,
  s.state,
  s.status as admin_status,
  s.status_note,
  s.last_seen,
  s.interval_s,
  s.gpu_state,
  s.gpu_message,
  s.gpu_lost,
  s.cpu_percent,
  s.memory_used_bytes,
  s.memory_total_bytes,
  s.gpu_models,
  s.last_ts,
  s.gpu_admin_gen,
  (select group_concat(grp, ' ') from (select distinct grp from server_groups where server_id = s.id order by grp)) as groups
from server_state s
where (:_scope_all or s.id in (select value from json_each(:_scope_servers)))
order by s.name_key, s.id
