-- title: Accept a host identity change (admin)
-- description: Marks host identity event :event_id (or every open one with event_id=all) as seen and expected; its host_identity alert resolves at the next alert pass. The event stays in host_identity_events with who accepted it and when.
-- admin: true
-- write: true
-- on_success_redirect: /admin#identity
-- on_success_message: Host identity change accepted
update host_identity_events
set accepted_at = cast(strftime('%s', 'now') as integer), accepted_by = :_actor_id
where accepted_at is null and (:event_id = 'all' or id = cast(:event_id as integer))
