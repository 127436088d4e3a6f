-- title: Active alerts
-- description: Alerts firing now (rules in config.yaml alerts.*), most severe first: host offline, GPU lost, nvidia-smi failure by kind, stale GPU data, uncorrectable ECC or pending row remap, hot GPU, full disk.
select
  a.id,
  a.rule,
  a.severity,
  a.server_id,
  coalesce(s.display_name, s.hostname) as server,
  a.subject,
  a.message,
  a.started_at,
  a.last_notified_at,
  a.notifications
from alerts a
left join servers s on s.id = a.server_id
where a.resolved_at is null
  and (:_scope_all or a.server_id in (select value from json_each(:_scope_servers)))
order by case a.severity when 'critical' then 0 else 1 end, a.started_at
