-- title: Alert history
-- description: Alerts of the last :hours hours (default 168), resolved or not.
select
  a.id, a.rule, a.severity, a.server_id, coalesce(s.display_name, s.hostname) as server, a.subject, a.message,
  a.started_at, a.resolved_at, a.notifications
from alerts a
left join servers s on s.id = a.server_id
where a.started_at >= cast(strftime('%s', 'now') as integer) - cast(coalesce(nullif(:hours, ''), 168) as real) * 3600
  and (:_scope_all or a.server_id in (select value from json_each(:_scope_servers)))
order by a.started_at desc
