-- title: Silence a server or a rule (admin)
-- description: No notifications for alerts of server :server_id (empty = every server) and rule :rule (empty = every rule) for :minutes minutes (1 to 43200); at least one of the two must be given. Alerts still show on the dashboard, marked silenced.
-- admin: true
-- write: true
-- on_success_redirect: /
-- on_success_message: Silenced
insert into silences (server_id, rule, note, created_by, created_at, until)
select
  cast(nullif(:server_id, '') as integer),
  nullif(:rule, ''),
  nullif(trim(:note), ''),
  :_actor_id,
  cast(strftime('%s', 'now') as integer),
  cast(strftime('%s', 'now') as integer) + 60 * cast(:minutes as integer)
where (nullif(:server_id, '') is not null or nullif(:rule, '') is not null)
  and cast(:minutes as integer) between 1 and 43200
