-- title: Announcements
-- description: Active announcements shown on the dashboard (level info, warning or critical).
select id, level, message, created_at, created_by, expires_at
from announcements
where ended_at is null
  and (expires_at is null or expires_at > cast(strftime('%s', 'now') as integer))
order by case level when 'critical' then 0 when 'warning' then 1 else 2 end, created_at desc
