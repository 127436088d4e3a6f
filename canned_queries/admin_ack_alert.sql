-- title: Acknowledge an alert (admin)
-- description: Marks firing alert :alert_id as acknowledged by you with a note; it sends no more reminders (the resolved notice still goes out). A new firing of the same rule needs a new acknowledgement.
-- admin: true
-- write: true
-- on_success_redirect: /
-- on_success_message: Alert acknowledged
insert or replace into alert_acks (alert_id, note, acked_by, acked_at)
select a.id, nullif(trim(:note), ''), :_actor_id, cast(strftime('%s', 'now') as integer)
from alerts a
where a.id = cast(:alert_id as integer) and a.resolved_at is null
