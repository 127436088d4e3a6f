-- title: End an announcement (admin)
-- admin: true
-- write: true
-- on_success_redirect: /admin#announcements
-- on_success_message: Announcement ended
update announcements set ended_at = cast(strftime('%s', 'now') as integer)
where id = cast(:announcement_id as integer) and ended_at is null
