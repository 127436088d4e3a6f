-- title: End a silence (admin)
-- description: Ends silence :silence_id now; notifications resume at the next alert evaluation.
-- admin: true
-- write: true
-- on_success_redirect: /
-- on_success_message: Silence ended
update silences
set ended_at = cast(strftime('%s', 'now') as integer)
where id = cast(:silence_id as integer) and ended_at is null
