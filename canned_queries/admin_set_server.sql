-- title: Set a server's name and status (admin)
-- description: Display name (empty = hostname), status active / maintenance / fault and a note.
-- admin: true
-- write: true
-- on_success_redirect: /admin#servers
-- on_success_message: Server updated
update servers
set display_name = nullif(trim(:display_name), ''),
    name_key = natural_key(coalesce(nullif(trim(:display_name), ''), hostname)),
    status = :status,
    status_note = nullif(trim(:status_note), '')
where id = cast(:server_id as integer)
