-- title: Silences
-- description: Silences in force now: no notifications for alerts of server_id (null = every server) and rule (null = every rule) until `until` (UTC epoch s), set by created_by with a note.
select
  x.id,
  x.server_id,
  coalesce(s.display_name, s.hostname) as server,
  x.rule,
  x.note,
  x.created_by,
  x.created_at,
  x.until
from silences x
left join servers s on s.id = x.server_id
where x.ended_at is null and x.until > cast(strftime('%s', 'now') as integer)
  and (:_scope_all or x.server_id is null or x.server_id in (select value from json_each(:_scope_servers)))
order by x.until
