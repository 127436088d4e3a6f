-- title: Servers
-- description: Latest state of every server you may see. status is online, stale (two reports missed), offline (four missed), error (GPU collection failed or marked faulty) or maintenance. Bytes are bytes, rates bytes/s, times UTC epoch seconds.
select
  s.id as server_id,
  coalesce(s.display_name, s.hostname) as name,
  s.hostname,
  s.state as status,
  s.status as admin_status,
  s.status_note,
  s.first_seen,
  s.last_seen,
  s.seen_age_s,
  s.interval_s,
  s.clock_skew_s,
  s.agent_version,
  s.os,
  s.kernel,
  s.arch,
  s.cpu_model,
  s.cpu_count,
  s.cpu_percent,
  s.load_1,
  s.load_5,
  s.load_15,
  s.memory_used_bytes,
  s.memory_total_bytes,
  s.swap_used_bytes,
  s.swap_total_bytes,
  s.net_rx_bps,
  s.net_tx_bps,
  s.uptime_s,
  s.gpu_state,
  s.gpu_message,
  s.gpu_lost,
  s.spool_depth,
  s.spool_dropped,
  s.rejected_reports,
  (select count(*) from gpu_state g where g.server_id = s.id and g.present) as gpu_count,
  (select count(*) from gpu_state g where g.server_id = s.id and g.present
     and (g.process_count > 0 or coalesce(g.utilization_gpu, 0) >= 10)) as gpus_busy,
  (select group_concat(name, ', ') from (
     select g.name || ' × ' || count(*) as name from gpus g
     where g.server_id = s.id and g.present group by g.name order by g.name)) as gpu_models
from server_state s
where (:_scope_all or s.id in (select value from json_each(:_scope_servers)))
order by name collate nocase
