-- title: Set a GPU's status (admin)
-- description: Status active / maintenance / fault and a note for one GPU.
-- admin: true
-- write: true
-- on_success_redirect: /admin#gpus
-- on_success_message: GPU updated
update gpus
set status = :status,
    status_note = nullif(trim(:status_note), '')
where id = cast(:gpu_id as integer)
