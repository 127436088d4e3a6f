-- title: Active alerts
-- description: Alerts firing now (built-in rules of config.yaml alerts.*, and the rules made on /admin/rules), most severe first (critical, warning, info): host offline, GPU lost, nvidia-smi failure by kind, stale GPU data, uncorrectable ECC or pending row remap, hot GPU, full disk. last_seen is the server's last report (the live "offline for" age); acked_by/acked_at/ack_note say who acknowledged it; silenced_until is the end of a silence that covers it (no notifications until then). Times UTC epoch s.
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
  a.notifications,
  s.last_seen,
  k.acked_by,
  k.acked_at,
  k.note as ack_note,
  (select max(x.until) from silences x
    where x.ended_at is null and x.until > cast(strftime('%s', 'now') as integer)
      and (x.server_id is null or x.server_id = a.server_id)
      and (x.rule is null or x.rule = a.rule)) as silenced_until
from alerts a
left join servers s on s.id = a.server_id
left join alert_acks k on k.alert_id = a.id
where a.resolved_at is null
  and (:_scope_all or a.server_id in (select value from json_each(:_scope_servers)))
order by case a.severity when 'critical' then 0 when 'warning' then 1 else 2 end, a.started_at
