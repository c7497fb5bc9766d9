-- The Taiga-like dataset's tables (a simplified copy of Taiga's main tables: no lookup tables such
-- as statuses). testkit.dataset.db.create_schema runs this file as one script, in this order.
-- Kept as SQL so that it reads (and diffs) like the schema it mirrors: serial ids with
-- sequences, Django-style deferrable FKs, unique constraints, secondary indexes, jsonb and text[].

CREATE TABLE users_user (
    id serial PRIMARY KEY,
    password varchar(128) NOT NULL,
    last_login timestamptz,
    is_superuser boolean NOT NULL,
    username varchar(255) NOT NULL UNIQUE,
    email varchar(255) NOT NULL UNIQUE,
    is_active boolean NOT NULL,
    full_name varchar(256) NOT NULL,
    color varchar(9) NOT NULL,
    bio text NOT NULL,
    photo varchar(500),
    date_joined timestamptz NOT NULL,
    lang varchar(20) NOT NULL,
    timezone varchar(63) NOT NULL,
    is_system boolean NOT NULL,
    uuid varchar(32) NOT NULL UNIQUE,
    accepted_terms boolean NOT NULL
);

CREATE TABLE projects_project (
    id serial PRIMARY KEY,
    name varchar(250) NOT NULL,
    slug varchar(250) NOT NULL UNIQUE,
    description text NOT NULL,
    created_date timestamptz NOT NULL,
    modified_date timestamptz NOT NULL,
    owner_id integer REFERENCES users_user(id) DEFERRABLE INITIALLY DEFERRED,
    is_private boolean NOT NULL,
    total_milestones integer,
    tags text[],
    is_backlog_activated boolean NOT NULL,
    is_kanban_activated boolean NOT NULL,
    is_issues_activated boolean NOT NULL,
    logo varchar(500),
    anon_permissions text[],
    public_permissions text[]
);

CREATE TABLE userstories_userstory (
    id serial PRIMARY KEY,
    ref bigint NOT NULL,
    project_id integer NOT NULL REFERENCES projects_project(id) DEFERRABLE INITIALLY DEFERRED,
    owner_id integer REFERENCES users_user(id) DEFERRABLE INITIALLY DEFERRED,
    assigned_to_id integer REFERENCES users_user(id) DEFERRABLE INITIALLY DEFERRED,
    status_id integer NOT NULL,
    subject text NOT NULL,
    description text NOT NULL,
    tags text[],
    is_closed boolean NOT NULL,
    is_blocked boolean NOT NULL,
    blocked_note text NOT NULL,
    backlog_order bigint NOT NULL,
    kanban_order bigint NOT NULL,
    created_date timestamptz NOT NULL,
    modified_date timestamptz NOT NULL,
    finish_date timestamptz,
    due_date date,
    version integer NOT NULL,
    client_requirement boolean NOT NULL,
    team_requirement boolean NOT NULL,
    UNIQUE (project_id, ref)
);

CREATE TABLE tasks_task (
    id serial PRIMARY KEY,
    ref bigint NOT NULL,
    project_id integer NOT NULL REFERENCES projects_project(id) DEFERRABLE INITIALLY DEFERRED,
    user_story_id integer REFERENCES userstories_userstory(id) DEFERRABLE INITIALLY DEFERRED,
    owner_id integer REFERENCES users_user(id) DEFERRABLE INITIALLY DEFERRED,
    assigned_to_id integer REFERENCES users_user(id) DEFERRABLE INITIALLY DEFERRED,
    status_id integer NOT NULL,
    subject text NOT NULL,
    description text NOT NULL,
    tags text[],
    is_blocked boolean NOT NULL,
    blocked_note text NOT NULL,
    created_date timestamptz NOT NULL,
    modified_date timestamptz NOT NULL,
    finished_date timestamptz,
    us_order bigint NOT NULL,
    taskboard_order bigint NOT NULL,
    is_iocaine boolean NOT NULL,
    version integer NOT NULL,
    UNIQUE (project_id, ref)
);

CREATE TABLE issues_issue (
    id serial PRIMARY KEY,
    ref bigint NOT NULL,
    project_id integer NOT NULL REFERENCES projects_project(id) DEFERRABLE INITIALLY DEFERRED,
    owner_id integer REFERENCES users_user(id) DEFERRABLE INITIALLY DEFERRED,
    assigned_to_id integer REFERENCES users_user(id) DEFERRABLE INITIALLY DEFERRED,
    status_id integer NOT NULL,
    severity_id integer NOT NULL,
    priority_id integer NOT NULL,
    type_id integer NOT NULL,
    subject text NOT NULL,
    description text NOT NULL,
    tags text[],
    is_blocked boolean NOT NULL,
    blocked_note text NOT NULL,
    created_date timestamptz NOT NULL,
    modified_date timestamptz NOT NULL,
    finished_date timestamptz,
    due_date date,
    version integer NOT NULL,
    UNIQUE (project_id, ref)
);

CREATE TABLE history_historyentry (
    id varchar(255) PRIMARY KEY,
    "user" jsonb,
    created_at timestamptz NOT NULL,
    type smallint NOT NULL,
    is_snapshot boolean NOT NULL,
    key varchar(255) NOT NULL,
    diff jsonb,
    snapshot jsonb,
    "values" jsonb,
    comment text NOT NULL,
    comment_html text NOT NULL,
    delete_comment_date timestamptz,
    is_hidden boolean NOT NULL,
    project_id integer NOT NULL REFERENCES projects_project(id) DEFERRABLE INITIALLY DEFERRED
);

CREATE TABLE attachments_attachment (
    id serial PRIMARY KEY,
    owner_id integer REFERENCES users_user(id) DEFERRABLE INITIALLY DEFERRED,
    created_date timestamptz NOT NULL,
    modified_date timestamptz NOT NULL,
    object_id integer NOT NULL CHECK (object_id >= 0),
    attached_file varchar(500) NOT NULL,
    is_deprecated boolean NOT NULL,
    description text NOT NULL,
    "order" integer NOT NULL,
    content_type_id integer NOT NULL,
    project_id integer NOT NULL REFERENCES projects_project(id) DEFERRABLE INITIALLY DEFERRED,
    name varchar(500) NOT NULL,
    size bigint NOT NULL,
    sha1 varchar(40) NOT NULL,
    from_comment boolean NOT NULL
);

CREATE INDEX users_user_full_name_idx ON users_user (full_name);
CREATE INDEX projects_project_owner_id_idx ON projects_project (owner_id);
CREATE INDEX userstories_userstory_project_id_idx ON userstories_userstory (project_id);
CREATE INDEX userstories_userstory_assigned_to_id_idx ON userstories_userstory (assigned_to_id);
CREATE INDEX tasks_task_project_id_idx ON tasks_task (project_id);
CREATE INDEX tasks_task_user_story_id_idx ON tasks_task (user_story_id);
CREATE INDEX issues_issue_project_id_idx ON issues_issue (project_id);
CREATE INDEX issues_issue_modified_date_idx ON issues_issue (modified_date);
CREATE INDEX history_historyentry_key_idx ON history_historyentry (key);
CREATE INDEX history_historyentry_key_like_idx ON history_historyentry (key varchar_pattern_ops);
CREATE INDEX history_historyentry_project_id_idx ON history_historyentry (project_id);
CREATE INDEX attachments_attachment_object_idx ON attachments_attachment (content_type_id, object_id);
CREATE INDEX attachments_attachment_project_id_idx ON attachments_attachment (project_id);
