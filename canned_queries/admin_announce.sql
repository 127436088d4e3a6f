-- title: Post an announcement (admin)
-- description: A banner on everyone's dashboard: level info / warning / critical, for :hours hours (empty or 0 = until ended).
-- admin: true
-- write: true
-- on_success_redirect: /admin#announcements
-- on_success_message: Announcement posted
insert into announcements (level, message, created_at, created_by, expires_at)
values (
  :level,
  trim(:message),
  cast(strftime('%s', 'now') as integer),
  :_actor_id,
  case when cast(nullif(:hours, '') as real) > 0
    then cast(strftime('%s', 'now') as integer) + cast(cast(:hours as real) * 3600 as integer) end
)
