-- title: Mark a lost GPU removed (admin)
-- description: A GPU missing from its server's reports (present = 0) is shown as lost until an admin marks it removed; its history is kept. Only lost GPUs can be marked; a GPU that reports again shows again.
-- admin: true
-- write: true
-- on_success_redirect: /admin#gpus
-- on_success_message: GPU marked removed
update gpus
set removed_at = cast(strftime('%s', 'now') as integer)
where id = cast(:gpu_id as integer) and present = 0
