-- title: Disks
-- description: Filesystems in each server's latest report (bytes).
select
  d.server_id,
  coalesce(s.display_name, s.hostname) as server,
  d.mountpoint,
  d.device,
  d.fstype,
  d.total_bytes,
  d.used_bytes,
  round(100.0 * d.used_bytes / nullif(d.total_bytes, 0), 1) as used_percent,
  d.health
from servers s
-- cross join: servers drive the plan (one primary-key search per server, never a scan of history)
cross join disk_samples d on d.server_id = s.id and d.ts = s.last_ts
where (:_scope_all or s.id in (select value from json_each(:_scope_servers)))
order by s.name_key, s.id, d.mountpoint
