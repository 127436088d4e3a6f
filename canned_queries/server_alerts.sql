-- title: Server alerts
-- description: Alerts of one server that were firing at any time in the last :hours hours (default 24, at most 17520): started before now and not resolved before the range began. For the alert markers of the history charts. started_at, resolved_at (null while firing): UTC epoch s.
select a.id, a.rule, a.severity, a.subject, a.message, a.started_at, a.resolved_at
from alerts a
where a.server_id = cast(:server_id as integer)
  and coalesce(a.resolved_at, cast(strftime('%s', 'now') as integer))
      >= cast(strftime('%s', 'now') as integer)
         - cast(min(max(coalesce(cast(nullif(:hours, '') as real), 24), 0.1), 17520) * 3600 as integer)
  and (:_scope_all or a.server_id in (select value from json_each(:_scope_servers)))
order by a.started_at
limit 500
