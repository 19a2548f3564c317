#!/usr/bin/env bash
# Take a Google Cloud project to a running, least-privilege opcancel, or tear it down again.
# Every step looks before it acts, so a second run only reads. ./deploy.sh --help explains;
# docs/deploy.md describes what is created and why, with the Google pages each choice rests on.
set -euo pipefail

# Empty arrays under set -u, used throughout, need bash 4.4 (macOS ships 3.2: brew install bash).
if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
  printf 'deploy.sh: needs bash 4.4 or later, not %s\n' "$BASH_VERSION" >&2
  exit 2
fi

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
readonly RUNTIME=python313
# The longest Cloud Functions allows an event-driven function (functions/docs/configuring/timeout);
# a batch of 100 operations needs room.
readonly TIMEOUT_S=540
# For push delivery the ack deadline also sets the push request's timeout, at most 600 s (Pub/Sub REST
# reference, projects.subscriptions, ackDeadlineSeconds), so it must outlast the function: the
# function's timeout plus a minute, within that maximum.
readonly ACK_DEADLINE_S=$((TIMEOUT_S + 60 > 600 ? 600 : TIMEOUT_S + 60))
# With Cloud Tasks delivering each check when due, the subscriptions' retry policy only paces
# redeliveries after transient trouble (API or store outages, a key held by a live worker); it is no
# longer the polling clock. Pub/Sub applies it per message, best effort (RetryPolicy reference).
readonly MIN_RETRY_DELAY=10s
readonly MAX_RETRY_DELAY=300s
# The most Pub/Sub allows (5-100). An estimate, since Pub/Sub's backoff is best effort: if every wait
# reached the 300 s cap, 100 attempts would span about 8 h, inside the 24 h retention Eventarc sets
# (eventarc/docs/retry-events).
readonly MAX_DELIVERY_ATTEMPTS=100
# The checks queue's retries cover a failed publish of a check to the checks topic: from a few
# seconds up to 5 minutes (past OPCANCEL_CHECK_MAX_DELAY_S the chain is overdue anyway and resumed). A task
# gives up once it has used both 100 attempts and a day (gcloud tasks queues create --help); its
# chain is then overdue, and a redelivered request or `python -m function resume` re-schedules it.
readonly TASKS_MIN_BACKOFF=5s
readonly TASKS_MAX_BACKOFF=300s
readonly TASKS_MAX_DOUBLINGS=6
readonly TASKS_MAX_ATTEMPTS=100
readonly TASKS_MAX_RETRY_DURATION=86400s
readonly DEFAULT_PERMISSIONS=securitycenter.operations.cancel,securitycenter.operations.get
readonly DEPLOY_LABEL=opcancel_deploy
# The cancel budget a deployment gets unless told otherwise (SPEC, Guard rails): deploy.sh never deploys
# without one.
readonly DEFAULT_CANCEL_BUDGET=100/1h
# The function's limits on OPCANCEL_CANCEL_BUDGET (function/_settings.py): its budget document keeps one
# entry per cancel in the window, so N is at most 10,000, and the window is at most a week.
readonly MAX_BUDGET_COUNT=10000
readonly MAX_BUDGET_WINDOW_S=604800
# What Cloud Build needs to build a function as a user-chosen account (functions/docs/securing/
# build-custom-sa; run/docs/configuring/services/build-service-account names Storage Object Admin
# for reading the uploaded source and storing the build's layers).
readonly BUILD_ROLES=(roles/logging.logWriter roles/artifactregistry.writer roles/storage.objectAdmin)
# The services of the registry opcancel ships (function/_names.py, BUILTIN_SERVICES) besides Security
# Command Center, and the prefix of each one's operation permissions, which deploy.sh grants at a
# project. IAM is asked first whether it knows each permission at that project.
readonly OPERATION_SERVICES=(aiplatform dataproc documentai translate cloudbuild)
declare -rA OPERATION_PERMISSION_PREFIX=(
  [aiplatform]=aiplatform.operations [dataproc]=dataproc.operations [documentai]=documentai.operations
  [translate]=cloudtranslate.operations [cloudbuild]=cloudbuild.operations
)
# macOS has shasum where Linux has sha256sum.
if command -v sha256sum >/dev/null; then CHECKSUM=(sha256sum); else CHECKSUM=(shasum -a 256); fi
readonly CHECKSUM
# Enabled first, before anything calls them: Resource Manager answers `projects describe` and IAM
# answers `list-testable-permissions`.
readonly APIS=(
  cloudresourcemanager.googleapis.com iam.googleapis.com cloudfunctions.googleapis.com run.googleapis.com
  eventarc.googleapis.com pubsub.googleapis.com firestore.googleapis.com cloudbuild.googleapis.com
  artifactregistry.googleapis.com cloudtasks.googleapis.com logging.googleapis.com monitoring.googleapis.com
  securitycenter.googleapis.com
)

usage() {
  cat <<'EOF'
Usage: ./deploy.sh --project PROJECT --region REGION [--allowed-parents PARENT,...]
                   [--mode enforce|shadow] [--cancel-budget N/DURATION] [--protected-parents PARENT,...]
                   [--paused] [--name NAME] [--firestore-location LOCATION] [--role-permissions P,...]
                   [--notification-channel CHANNEL,...] [--dry-run] [--destroy]

Deploys opcancel to Cloud Functions (2nd gen): the Pub/Sub topics, four service accounts, the
Cloud Tasks queue for delayed checks, custom roles where operations may be cancelled, the
Firestore database and its TTL policy, the functions and their subscriptions' ack deadline,
retry and dead-letter policies, log-based metrics, a dashboard, and alerts on dead letters, on the
cancel budget's breaker tripping and on a pause.
Safe to run again. docs/deploy.md explains each piece.

  --project P            Google Cloud project id.       env OPCANCEL_PROJECT, GOOGLE_CLOUD_PROJECT
  --region R             region of the functions and the queue, e.g. europe-west1.
                                                                               env OPCANCEL_REGION
  --allowed-parents L    comma list of where the function may act, its OPCANCEL_ALLOWED_PARENTS:
                           organizations/ID    Security Command Center, with a custom role there;
                           projects/PROJECT    every registered service, custom role at PROJECT;
                           //SERVICE.googleapis.com/projects/PROJECT[/...]  one service there.
                         Unset: everything is allowed and no permission is granted anywhere.
                                                                      env OPCANCEL_ALLOWED_PARENTS
  --mode M               enforce (default) or shadow: in shadow mode every request is a dry run,
                         looked at with one get and never cancelled.              env OPCANCEL_MODE
  --cancel-budget B      N/DURATION: never more than N cancels (N at most 10000) in any window of
                         DURATION (a whole number of s, m or h, at most 168h); the request that would
                         exceed it trips the breaker, which holds every request until `guard reset`
                         (default 100/1h; deploy.sh never deploys without one). env OPCANCEL_CANCEL_BUDGET
  --protected-parents L  comma list, same forms as --allowed-parents, of parents never cancelled:
                         their requests are REJECTED. Grants nothing.   env OPCANCEL_PROTECTED_PARENTS
  --paused               pin the pause: every new request is held until a deploy without --paused
                         (`guard unpause` cannot lift it).                    env OPCANCEL_PAUSED=true
  --name N               prefix of every resource name (default opcancel).      env OPCANCEL_NAME
  --firestore-location L location of a new Firestore database (default: the region).
                                                              env OPCANCEL_FIRESTORE_LOCATION
  --role-permissions P   Security Command Center permissions of the organization role
                         (default securitycenter.operations.cancel,securitycenter.operations.get).
                                                                env OPCANCEL_ROLE_PERMISSIONS
  --notification-channel C  comma list of projects/P/notificationChannels/ID the alerts (dead
                         letters, breaker, pause) notify (default: none; they still show in the console).
                                                         env OPCANCEL_NOTIFICATION_CHANNEL
  --dry-run              print every gcloud command, one per line, and run none.
                                                                       env OPCANCEL_DRY_RUN=1
  --destroy              remove what deploy.sh created (not the Firestore database, not the APIs).
                         Deliberately a flag only: a leftover variable must never tear down.
  -h, --help             this text.

A dry run answers every check as for a project where nothing exists yet (with --destroy: where
everything does), and shows values only a real run can read as <placeholders>. The files its
commands name (metric, dashboard and alert definitions) are kept, and their directory printed.
EOF
}

usage_error() {
  printf 'deploy.sh: %s\nRun ./deploy.sh --help for usage.\n' "$1" >&2
  exit 2
}

die() {
  printf 'deploy.sh: %s\n' "$1" >&2
  exit 1
}

note() {
  printf '%s\n' "$*" >&2
}

trim() {
  local text=$1
  text=${text#"${text%%[![:space:]]*}"}
  printf '%s' "${text%"${text##*[![:space:]]}"}"
}

# --- settings: flags override the environment -----------------------------------------------------

project=${OPCANCEL_PROJECT:-${GOOGLE_CLOUD_PROJECT:-}}
region=${OPCANCEL_REGION:-}
name=${OPCANCEL_NAME:-opcancel}
firestore_location=${OPCANCEL_FIRESTORE_LOCATION:-}
permissions_text=${OPCANCEL_ROLE_PERMISSIONS:-$DEFAULT_PERMISSIONS}
parents_given=${OPCANCEL_ALLOWED_PARENTS+yes}
parents_text=${OPCANCEL_ALLOWED_PARENTS-}
channels_text=${OPCANCEL_NOTIFICATION_CHANNEL:-}
mode=${OPCANCEL_MODE:-enforce}
budget_text=${OPCANCEL_CANCEL_BUDGET-$DEFAULT_CANCEL_BUDGET}
protected_given=${OPCANCEL_PROTECTED_PARENTS+yes}
protected_text=${OPCANCEL_PROTECTED_PARENTS-}
paused_text=${OPCANCEL_PAUSED:-}
case ${paused_text,,} in
  "" | false) paused=false ;;
  true) paused=true ;;
  *) usage_error "OPCANCEL_PAUSED must be true or false, not '$OPCANCEL_PAUSED'" ;;
esac
destroy=false
case ${OPCANCEL_DRY_RUN:-} in
  "" | 0 | false) dry_run=false ;;
  1 | true) dry_run=true ;;
  *) usage_error "OPCANCEL_DRY_RUN must be 1, true, 0 or false, not '$OPCANCEL_DRY_RUN'" ;;
esac

set_option() {
  case $1 in
    --project) project=$2 ;;
    --region) region=$2 ;;
    --allowed-parents) parents_given=yes parents_text=$2 ;;
    --name) name=$2 ;;
    --firestore-location) firestore_location=$2 ;;
    --role-permissions) permissions_text=$2 ;;
    --notification-channel) channels_text=$2 ;;
    --mode) mode=$2 ;;
    --cancel-budget) budget_text=$2 ;;
    --protected-parents) protected_given=yes protected_text=$2 ;;
  esac
}

readonly VALUED_OPTIONS=" --project --region --allowed-parents --name --firestore-location --role-permissions \
--notification-channel --mode --cancel-budget --protected-parents "
while (($#)); do
  if [[ $VALUED_OPTIONS == *" $1 "* ]]; then
    # A flag followed by another flag is a forgotten value, not a value that starts with dashes.
    if (($# < 2)) || [[ $2 == --* ]]; then
      usage_error "$1 needs a value"
    fi
    set_option "$1" "$2"
    shift 2
  elif [[ $1 == --*=* && $VALUED_OPTIONS == *" ${1%%=*} "* ]]; then
    set_option "${1%%=*}" "${1#*=}"
    shift
  else
    case $1 in
      --dry-run) dry_run=true && shift ;;
      --paused) paused=true && shift ;;
      --destroy) destroy=true && shift ;;
      -h | --help) usage && exit 0 ;;
      *) usage_error "unknown argument '$1'" ;;
    esac
  fi
done

readonly PROJECT_PATTERN='[a-z][a-z0-9-]{4,28}[a-z0-9]'
[[ -n $project ]] || usage_error "no project: pass --project or set OPCANCEL_PROJECT or GOOGLE_CLOUD_PROJECT"
[[ $project =~ ^${PROJECT_PATTERN}$ ]] ||
  usage_error "'$project' is not a project id (6-30 lowercase letters, digits and hyphens, starting with a letter)"
[[ -n $region ]] || usage_error "no region: pass --region or set OPCANCEL_REGION"
[[ $region =~ ^[a-z]+(-[a-z]+)+[0-9]+$ ]] || usage_error "'$region' is not a region such as europe-west1"
[[ $name =~ ^[a-z]([a-z0-9-]{0,19}[a-z0-9])?$ ]] ||
  usage_error "'$name' is not a usable name: 1-21 lowercase letters, digits and hyphens, starting with a letter"
firestore_location=${firestore_location:-$region}
[[ $firestore_location =~ ^[a-z][a-z0-9-]*[0-9]$ ]] ||
  usage_error "'$firestore_location' is not a Firestore location such as europe-west1 or eur3"

split_list() {
  local entry entries
  listed=()
  IFS=, read -ra entries <<<"${1//$'\n'/,}"
  for entry in "${entries[@]}"; do
    entry=$(trim "$entry")
    [[ -n $entry ]] || continue
    [[ " ${listed[*]} " == *" $entry "* ]] || listed+=("$entry")
  done
}

# Where an allowed parent lets the function act, as the scope deploy.sh grants at: organizations/ID
# for Security Command Center, projects/PROJECT for the services of OPERATION_SERVICES. Sets $scope and
# $scope_services (the services a project scope covers, or "" where deploy.sh knows none to grant).
readonly SEGMENT='[A-Za-z0-9._~-]+'
parent_scope() {
  local parent=$1 project_part
  scope="" scope_services=""
  if [[ $parent =~ ^organizations/[1-9][0-9]{0,31}$ ]]; then
    scope=$parent
  elif [[ $parent =~ ^projects/(${PROJECT_PATTERN}|[1-9][0-9]{0,31})$ ]]; then
    scope=$parent scope_services="${OPERATION_SERVICES[*]}"
  elif [[ $parent =~ ^//([a-z][a-z0-9-]*)\.googleapis\.com/(organizations/[1-9][0-9]{0,31}|projects/(${PROJECT_PATTERN}|[1-9][0-9]{0,31})((/${SEGMENT})*))$ ]]; then
    local service=${BASH_REMATCH[1]} resource=${BASH_REMATCH[2]}
    project_part=${BASH_REMATCH[4]}
    [[ /$project_part/ != */./* && /$project_part/ != */../* ]] || return 1
    if [[ $resource == organizations/* ]]; then
      [[ $service == securitycenter ]] || return 1
      scope=$resource
    else
      scope=projects/${BASH_REMATCH[3]}
      if [[ -n ${OPERATION_PERMISSION_PREFIX[$service]:-} ]]; then
        scope_services=$service
      fi
    fi
  else
    return 1
  fi
}

parents=()
if [[ -n $parents_given ]]; then
  # Set but blank is most likely a templating slip; allowing everything would fail open.
  [[ $parents_text =~ [^[:space:],] ]] ||
    usage_error "allowed parents are set but empty; leave them unset to allow everything"
  split_list "$parents_text"
  for entry in "${listed[@]}"; do
    parent_scope "$entry" || usage_error "allowed parent '$entry' is not organizations/ID, projects/PROJECT \
or //SERVICE.googleapis.com/projects/PROJECT[/...]"
  done
  parents=("${listed[@]}")
fi

protected=()
if [[ -n $protected_given ]]; then
  # Set but blank would protect nothing: most likely a templating slip, and it fails open.
  [[ $protected_text =~ [^[:space:],] ]] ||
    usage_error "protected parents are set but empty; leave them unset to protect nothing"
  split_list "$protected_text"
  for entry in "${listed[@]}"; do
    parent_scope "$entry" || usage_error "protected parent '$entry' is not organizations/ID, projects/PROJECT \
or //SERVICE.googleapis.com/projects/PROJECT[/...]"
  done
  protected=("${listed[@]}")
fi

[[ $mode == enforce || $mode == shadow ]] || usage_error "--mode must be enforce or shadow, not '$mode'"

# The budget's rules: N a whole number 1..10000, DURATION a positive whole number of s, m or h, at most a
# week: the function's, written canonically (no spaces, no leading zeros). Checked here, before anything
# changes; the function checks OPCANCEL_CANCEL_BUDGET again at start-up.
declare -rA UNIT_S=([s]=1 [m]=60 [h]=3600)
budget_problem="is not N/DURATION: N cancels (a positive whole number) in any DURATION, a positive whole number \
of s, m or h such as 100/1h or 20/15m"
[[ $budget_text =~ [^[:space:]] ]] ||
  usage_error "the cancel budget is set but empty; deploy.sh always deploys with one (default $DEFAULT_CANCEL_BUDGET)"
[[ $budget_text =~ ^([1-9][0-9]{0,8})/([1-9][0-9]{0,8})([smh])$ ]] || usage_error "cancel budget '$budget_text' $budget_problem"
budget_limit=${BASH_REMATCH[1]}
budget_window_s=$((BASH_REMATCH[2] * UNIT_S[${BASH_REMATCH[3]}]))
((budget_limit <= MAX_BUDGET_COUNT)) ||
  usage_error "cancel budget '$budget_text' allows more than $MAX_BUDGET_COUNT cancels, the most the function counts"
((budget_window_s <= MAX_BUDGET_WINDOW_S)) ||
  usage_error "cancel budget '$budget_text' has a window longer than a week (168h); choose a shorter one"

split_list "$permissions_text"
permissions=("${listed[@]}")
for entry in "${permissions[@]}"; do
  [[ $entry =~ ^[a-z][a-zA-Z0-9]*(\.[a-zA-Z0-9]+){2}$ ]] ||
    usage_error "'$entry' is not an IAM permission such as securitycenter.operations.cancel"
done
((${#permissions[@]})) || usage_error "the organization role needs at least one permission"

split_list "$channels_text"
channels=("${listed[@]}")
for entry in "${channels[@]}"; do
  [[ $entry =~ ^projects/(${PROJECT_PATTERN}|[1-9][0-9]{0,31})/notificationChannels/[A-Za-z0-9_-]+$ ]] ||
    usage_error "'$entry' is not a notification channel such as projects/$project/notificationChannels/123"
done

topic_requests=$name-requests
topic_checks=$name-checks
topic_results=$name-results
topic_dead_letter=$name-dead-letter
function_requests=$name-requests
function_checks=$name-checks
function_http=$name-http
queue=$name-checks
queue_path=projects/$project/locations/$region/queues/$queue
runtime_account=$name-function@$project.iam.gserviceaccount.com
trigger_account=$name-trigger@$project.iam.gserviceaccount.com
build_account=$name-build@$project.iam.gserviceaccount.com
tasks_account=$name-tasks@$project.iam.gserviceaccount.com
runtime_member=serviceAccount:$runtime_account
trigger_member=serviceAccount:$trigger_account
build_member=serviceAccount:$build_account
tasks_member=serviceAccount:$tasks_account
role_id=${name//-/_}_operation_canceller
collection=$name-idempotency
metric_results=$name-results
metric_cancels=$name-cancels-sent
metric_retries=$name-retries
metric_takeovers=$name-takeovers
metric_guard_events=$name-guard-events
dashboard_title="opcancel ($name)"
dead_letter_policy_title="opcancel ($name): messages in the dead-letter subscription"
breaker_policy_title="opcancel ($name): the cancel budget breaker tripped"
pause_policy_title="opcancel ($name): cancelling is paused"
if $destroy; then dry_exists=0; else dry_exists=1; fi

$dry_run || command -v gcloud >/dev/null || die "gcloud is not installed: see https://cloud.google.com/sdk/docs/install"

# --- running gcloud -------------------------------------------------------------------------------

quote() {
  if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

show() {
  local line="" arg
  for arg in "$@"; do
    line+="${line:+ }$(quote "$arg")"
  done
  printf '%s\n' "$line"
}

# A command that changes something: printed in a dry run, echoed and run otherwise.
change() {
  if $dry_run; then
    show "$@"
    return
  fi
  printf '+ %s\n' "$(show "$@")" >&2
  "$@" || die "failed: $(show "$@")"
}

# A binding naming a service account created seconds ago can be refused while IAM catches up (IAM calls
# its changes eventually consistent, iam/docs/access-change-propagation; reported for new accounts in
# hashicorp/terraform-provider-google#6758), so a refused binding is tried again.
change_retrying() {
  if $dry_run; then
    show "$@"
    return
  fi
  local attempt
  printf '+ %s\n' "$(show "$@")" >&2
  for attempt in 1 2 3 4; do
    "$@" && return
    ((attempt < 4)) || break
    note "retrying in $((attempt * 10)) s: a new identity can take a moment to reach IAM"
    sleep $((attempt * 10))
  done
  die "failed: $(show "$@")"
}

# A read: its output lands in $answer and its status is the command's (a describe fails on what does
# not exist). A dry run answers as for an empty project, or with --destroy as for a complete one.
query() {
  answer=""
  if $dry_run; then
    show "$@"
    return $dry_exists
  fi
  answer=$("$@" 2>/dev/null)
}

# A value later commands need, into $answer; a dry run shows the placeholder given first.
lookup() {
  local placeholder=$1
  shift
  if $dry_run; then
    show "$@"
    answer=$placeholder
    return
  fi
  if ! answer=$("$@") || [[ -z $answer ]]; then
    die "could not read a value deploy.sh needs: $(show "$@")"
  fi
}

# A value found by listing (a dashboard, an alert policy), into $answer: the first line of a list's
# output, whose status says whether anything was found. A dry run shows the placeholder given first.
find_one() {
  local placeholder=$1
  shift
  answer=""
  if $dry_run; then
    show "$@"
    answer=$placeholder
    return $dry_exists
  fi
  answer=$("$@") || die "could not list: $(show "$@")"
  answer=${answer%%$'\n'*}
  [[ -n $answer ]]
}

digest_of() {
  "${CHECKSUM[@]}" | cut -c1-32
}

sorted_csv() {
  tr ',' '\n' <<<"$1" | sed '/^$/d' | LC_ALL=C sort -u | paste -sd, -
}

joined() {
  local IFS=,
  printf '%s' "$*"
}

binding_filter() {
  printf 'bindings.role="%s" AND bindings.members="%s"' "$1" "$2"
}

# policy_has MEMBER ROLE GET_IAM_POLICY_COMMAND...: whether the policy already grants ROLE to MEMBER.
policy_has() {
  local member=$1 role=$2
  shift 2
  query "$@" --flatten='bindings[].members' --filter="$(binding_filter "$role" "$member")" \
    --format='value(bindings.role)' && { $dry_run || [[ -n $answer ]]; }
}

# grant MEMBER ROLE RESOURCE_COMMAND...: adds the binding unless the policy has it. RESOURCE_COMMAND is
# the gcloud command naming the resource with VERB where the verb goes, e.g.
# `gcloud pubsub topics VERB T --project=P`. Bindings on projects and organizations are unconditional.
grant() {
  local member=$1 role=$2 extra=()
  shift 2
  [[ $2 != projects && $2 != organizations ]] || extra=(--condition=None)
  policy_has "$member" "$role" "${@/#VERB/get-iam-policy}" ||
    change_retrying "${@/#VERB/add-iam-policy-binding}" --member="$member" --role="$role" "${extra[@]}"
}

# revoke MEMBER ROLE RESOURCE_COMMAND...: removes the binding where the policy has it.
revoke() {
  local member=$1 role=$2 extra=()
  shift 2
  [[ $2 != projects && $2 != organizations ]] || extra=(--all)
  if policy_has "$member" "$role" "${@/#VERB/get-iam-policy}"; then
    change "${@/#VERB/remove-iam-policy-binding}" --member="$member" --role="$role" "${extra[@]}"
  fi
}

# --- custom roles, at organizations (Security Command Center) and projects (other services) -----

# The gcloud words that name a scope's custom role and its IAM policy.
scope_words() {
  case $1 in
    organizations/*) scope_flag=--organization=${1#organizations/} scope_policy=(gcloud organizations VERB "${1#organizations/}") ;;
    projects/*) scope_flag=--project=${1#projects/} scope_policy=(gcloud projects VERB "${1#projects/}") ;;
  esac
}

# Prints "DELETED<TAB>PERMISSIONS" into $answer: a deleted custom role keeps its id, and can be undeleted
# for 7 days (iam/docs/creating-custom-roles, deleting a custom role).
role_state() {
  scope_words "$1"
  query gcloud iam roles describe "$role_id" "$scope_flag" --format='value(deleted,includedPermissions.list())'
}

grant_scope() {
  local scope=$1 wanted
  wanted=$(sorted_csv "$2")
  scope_words "$scope"
  if role_state "$scope"; then
    if [[ ${answer%%$'\t'*} == True ]]; then
      change gcloud iam roles undelete "$role_id" "$scope_flag"
    fi
    if [[ $(sorted_csv "${answer#*$'\t'}") != "$wanted" ]]; then
      change gcloud iam roles update "$role_id" "$scope_flag" --permissions="$wanted" --quiet
    fi
  else
    change gcloud iam roles create "$role_id" "$scope_flag" --title="opcancel operation canceller" \
      --description="Cancel and get long-running operations, for the opcancel deployment $name in $project" \
      --permissions="$wanted" --stage=GA --quiet
  fi
  grant "$runtime_member" "$scope/roles/$role_id" "${scope_policy[@]}"
}

revoke_scope() {
  local scope=$1
  scope_words "$scope"
  revoke "$runtime_member" "$scope/roles/$role_id" "${scope_policy[@]}"
  if role_state "$scope" && [[ ${answer%%$'\t'*} != True ]]; then
    change gcloud iam roles delete "$role_id" "$scope_flag" --quiet
  fi
}

# The scopes of a list of allowed parents, in the order first named, into $scopes (and each project
# scope's services into $services_at).
declare -A services_at=()
scopes_of() {
  local parent service
  scopes=()
  services_at=()
  for parent in "$@"; do
    parent_scope "$parent" || continue
    [[ " ${scopes[*]} " == *" $scope "* ]] || scopes+=("$scope")
    for service in $scope_services; do
      [[ " ${services_at[$scope]:-} " == *" $service "* ]] || services_at[$scope]+="${services_at[$scope]:+ }$service"
    done
  done
}

# The scopes the deployed function was last given, so narrowing the list narrows the grants, and its
# mode and pinned pause ($deployed_mode, $deployed_paused), so a run that changes them says so. Leaves
# $scopes as it found it.
read_deployed() {
  local entries current=("${scopes[@]}") variables=serviceConfig.environmentVariables
  deployed_scopes=() deployed_mode="" deployed_paused=""
  query gcloud functions describe "$function_requests" --project="$project" --region="$region" --gen2 \
    --format="value($variables.OPCANCEL_ALLOWED_PARENTS,$variables.OPCANCEL_MODE,$variables.OPCANCEL_PAUSED)" ||
    return 0
  # Split by hand: read with a tab in IFS would merge empty fields.
  deployed_paused=${answer##*$'\t'}
  answer=${answer%$'\t'*}
  deployed_mode=${answer##*$'\t'}
  IFS=, read -ra entries <<<"${answer%$'\t'*}"
  scopes_of "${entries[@]}"
  deployed_scopes=("${scopes[@]}")
  scopes=("${current[@]}")
}

# --- deploy ---------------------------------------------------------------------------------------

enable_apis() {
  local api missing=()
  query gcloud services list --enabled --project="$project" --format='value(config.name)' || true
  for api in "${APIS[@]}"; do
    grep -qx "$api" <<<"$answer" || missing+=("$api")
  done
  if ((${#missing[@]})); then
    change gcloud services enable "${missing[@]}" --project="$project"
  fi
}

# The permissions IAM can test at RESOURCE, as "NAME<TAB>LEVEL" lines in $answer; false in a dry run.
testable_at() {
  query gcloud iam list-testable-permissions "//cloudresourcemanager.googleapis.com/$1" \
    --format='value(name,customRolesSupportLevel)'
}

# LEVEL of PERMISSION in $answer (SUPPORTED, TESTING, NOT_SUPPORTED), or nothing where IAM does not know it.
support_level() {
  awk -F '\t' -v p="$1" '$1 == p { print ($2 == "" ? "SUPPORTED" : $2) }' <<<"$answer"
}

# Decides each scope's permissions before anything is created: at an organization the Security
# Command Center ones, which must all be known (stop otherwise); at a project those of its services
# that IAM knows there, skipping the others with a message. Fills $scope_permissions.
declare -A scope_permissions=()
plan_permissions() {
  local scope permission level organization="" service kept
  for scope in "${scopes[@]}"; do
    if [[ $scope == organizations/* ]]; then
      scope_permissions[$scope]=$(joined "${permissions[@]}")
      [[ -z $organization ]] || continue
      organization=$scope
      # Custom-role permissions are one catalogue, so asking at one organization answers for all.
      if ! testable_at "$scope"; then
        $dry_run || die "could not list the permissions testable at $scope"
        continue
      fi
      for permission in "${permissions[@]}"; do
        level=$(support_level "$permission")
        [[ -n $level ]] || die "IAM does not know the permission $permission at $scope; \
pass the permissions Security Command Center checks with --role-permissions"
        [[ $level != NOT_SUPPORTED ]] || die "the permission $permission cannot be used in a custom role"
      done
      continue
    fi
    kept=()
    if [[ -z ${services_at[$scope]:-} ]]; then
      note "No permission is granted at $scope: deploy.sh knows no operation permissions of the services" \
        "named there; grant them yourself."
      continue
    fi
    testable_at "$scope" || $dry_run || die "could not list the permissions testable at $scope"
    for service in ${services_at[$scope]}; do
      for permission in "${OPERATION_PERMISSION_PREFIX[$service]}".{cancel,get}; do
        if ! $dry_run; then
          level=$(support_level "$permission")
          if [[ -z $level || $level == NOT_SUPPORTED ]]; then
            note "Skipping $permission at $scope: IAM ${level:+cannot put it in a custom role}${level:-does not know it there}" \
              "(see docs/deploy.md, Known limitations)."
            continue
          fi
        fi
        kept+=("$permission")
      done
    done
    if ((${#kept[@]})); then
      scope_permissions[$scope]=$(joined "${kept[@]}")
    else
      note "No permission is granted at $scope: IAM knows none of its services' operation permissions there."
    fi
  done
}

ensure_topic() {
  query gcloud pubsub topics describe "$1" --project="$project" --format='value(name)' ||
    change gcloud pubsub topics create "$1" --project="$project"
}

ensure_service_account() {
  query gcloud iam service-accounts describe "$1" --project="$project" --format='value(email)' ||
    change gcloud iam service-accounts create "${1%%@*}" --project="$project" --display-name="$2"
}

ensure_firestore() {
  if query gcloud firestore databases describe --project="$project" --database='(default)' --format='value(type)'; then
    [[ $answer == FIRESTORE_NATIVE ]] ||
      die "the project's (default) database is in $answer; opcancel's store needs Firestore in Native mode"
  else
    change gcloud firestore databases create --project="$project" --database='(default)' \
      --location="$firestore_location" --type=firestore-native
  fi
  query gcloud firestore fields ttls list --project="$project" --database='(default)' \
    --collection-group="$collection" --format='value(name)' || true
  # --async: the policy takes effect in the background, and the store checks expiry on read anyway.
  if [[ $answer != */fields/expire_at ]]; then
    change gcloud firestore fields ttls update expire_at --project="$project" --database='(default)' \
      --collection-group="$collection" --enable-ttl --async
  fi
}

ensure_queue() {
  local settings=(--max-attempts="$TASKS_MAX_ATTEMPTS" --min-backoff="$TASKS_MIN_BACKOFF"
    --max-backoff="$TASKS_MAX_BACKOFF" --max-doublings="$TASKS_MAX_DOUBLINGS"
    --max-retry-duration="$TASKS_MAX_RETRY_DURATION")
  local wanted=$TASKS_MAX_ATTEMPTS$'\t'$TASKS_MIN_BACKOFF$'\t'$TASKS_MAX_BACKOFF$'\t'$TASKS_MAX_DOUBLINGS
  wanted+=$'\t'$TASKS_MAX_RETRY_DURATION
  local fields=retryConfig.maxAttempts,retryConfig.minBackoff,retryConfig.maxBackoff,retryConfig.maxDoublings
  fields+=,retryConfig.maxRetryDuration
  if query gcloud tasks queues describe "$queue" --project="$project" --location="$region" --format="value($fields)"; then
    [[ $answer == "$wanted" ]] ||
      change gcloud tasks queues update "$queue" --project="$project" --location="$region" "${settings[@]}"
  else
    change gcloud tasks queues create "$queue" --project="$project" --location="$region" "${settings[@]}"
    # A queue deleted in the last few days can make a create seem to succeed while no queue exists
    # (tasks/docs/reference/rest/v2/projects.locations.queues/delete), so look again.
    $dry_run || query gcloud tasks queues describe "$queue" --project="$project" --location="$region" \
      --format='value(name)' || die "Cloud Tasks did not create the queue $queue: a queue of that name deleted \
in the last 3 days still holds it. Run deploy.sh again later, or deploy under another --name."
  fi
}

# Everything gcloud uploads (see .gcloudignore), so a digest of it tells whether the code changed.
source_listing() {
  cd "$SCRIPT_DIR" &&
    find main.py requirements.txt function -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 |
    LC_ALL=C sort -z | xargs -0 "${CHECKSUM[@]}"
}

# deploy_function FUNCTION ENTRY_POINT [TOPIC]: a function triggered by TOPIC, or over HTTP without one.
# A deploy rebuilds and rolls out a new revision, so it runs only when the code or the configuration
# changed: their digest is kept in a label, and a function that is not ACTIVE is always redeployed.
# Trigger flags are sent only to create the function or to change a trigger that differs: gcloud puts
# `event_trigger` in the update mask whenever one is given (command_lib/functions/v2/deploy/command.py,
# _GetEventTrigger), and a trigger sent again can be recreated with its subscription, dropping the
# messages waiting in it (google-github-actions/deploy-cloud-functions#419). Without one, gcloud
# keeps the function's trigger as it is (gcloud functions deploy --help).
deploy_function() {
  local function=$1 entry_point=$2 topic=${3:-} env_vars sources digest trigger_flags wanted_trigger
  env_vars=GOOGLE_CLOUD_PROJECT=$project\|OPCANCEL_STORE=firestore\|OPCANCEL_FIRESTORE_COLLECTION=$collection
  env_vars+=\|OPCANCEL_CHECKS_TOPIC=$topic_checks\|OPCANCEL_RESULTS_TOPIC=$topic_results
  env_vars+=\|OPCANCEL_TASKS_QUEUE=$queue_path\|OPCANCEL_TASKS_SERVICE_ACCOUNT=$tasks_account
  env_vars+=\|OPCANCEL_MODE=$mode\|OPCANCEL_CANCEL_BUDGET=$budget_text
  if ((${#parents[@]})); then
    env_vars+=\|OPCANCEL_ALLOWED_PARENTS=$(joined "${parents[@]}")
  fi
  if ((${#protected[@]})); then
    env_vars+=\|OPCANCEL_PROTECTED_PARENTS=$(joined "${protected[@]}")
  fi
  if $paused; then
    env_vars+=\|OPCANCEL_PAUSED=true
  fi
  # ^|^ makes | the separator (gcloud topic escaping): the list of parents is comma-separated and an
  # account's email holds an @, and no value here can hold a |.
  local command=(gcloud functions deploy "$function" --project="$project" --region="$region" --gen2
    --runtime="$RUNTIME" --source="$SCRIPT_DIR" --entry-point="$entry_point"
    --build-service-account="projects/$project/serviceAccounts/$build_account"
    --service-account="$runtime_account" --timeout="${TIMEOUT_S}s" --no-allow-unauthenticated)
  if [[ -n $topic ]]; then
    command+=(--ingress-settings=internal-only)
    trigger_flags=(--trigger-topic="$topic" --trigger-service-account="$trigger_account" --retry)
    wanted_trigger=projects/$project/topics/$topic$'\t'$trigger_account$'\t'RETRY_POLICY_RETRY
  else
    trigger_flags=(--trigger-http)
    wanted_trigger=$'\t\t'
  fi
  command+=(--set-env-vars="^|^$env_vars")
  sources=$(source_listing) || die "could not read the function's source in $SCRIPT_DIR"
  digest=$(printf '%s\n' "$sources" "${command[@]}" "${trigger_flags[@]}" | digest_of)
  if query gcloud functions describe "$function" --project="$project" --region="$region" --gen2 \
    --format="value(state,labels.$DEPLOY_LABEL,eventTrigger.pubsubTopic,eventTrigger.serviceAccountEmail,eventTrigger.retryPolicy)"; then
    local state=${answer%%$'\t'*} rest=${answer#*$'\t'}
    local label=${rest%%$'\t'*} trigger=${rest#*$'\t'}
    if [[ $trigger != "$wanted_trigger" ]]; then
      note "The trigger of $function is not the one deploy.sh sets (${trigger//$'\t'/ } instead of" \
        "${wanted_trigger//$'\t'/ }): redeploying it with its trigger, which can recreate the trigger's" \
        "subscription and drop the messages waiting in it."
    elif [[ $state == ACTIVE && $label == "$digest" ]]; then
      return
    else
      trigger_flags=()
    fi
  fi
  change "${command[@]}" "${trigger_flags[@]}" --update-labels="$DEPLOY_LABEL=$digest" --quiet
}

# Eventarc made the function's push subscription. Its ack deadline, which for push is the request's
# timeout, must outlast the function; its retry and dead-letter policies are deploy.sh's. Each is read
# and corrected on every run, since a trigger recreated by hand gets a subscription with defaults.
configure_subscription() {
  local function=$1 pubsub_agent=$2 subscription
  lookup "<trigger of $function>" gcloud functions describe "$function" --project="$project" --region="$region" \
    --gen2 --format='value(eventTrigger.trigger)'
  lookup "<subscription of $function>" gcloud eventarc triggers describe "$answer" --project="$project" \
    --format='value(transport.pubsub.subscription)'
  subscription=$answer
  local wanted=$ACK_DEADLINE_S$'\t'$MIN_RETRY_DELAY$'\t'$MAX_RETRY_DELAY
  wanted+=$'\t'projects/$project/topics/$topic_dead_letter$'\t'$MAX_DELIVERY_ATTEMPTS
  local fields=ackDeadlineSeconds,retryPolicy.minimumBackoff,retryPolicy.maximumBackoff
  fields+=,deadLetterPolicy.deadLetterTopic,deadLetterPolicy.maxDeliveryAttempts
  if ! query gcloud pubsub subscriptions describe "$subscription" --project="$project" --format="value($fields)" ||
    [[ $answer != "$wanted" ]]; then
    change gcloud pubsub subscriptions update "$subscription" --project="$project" \
      --ack-deadline="$ACK_DEADLINE_S" --min-retry-delay="$MIN_RETRY_DELAY" --max-retry-delay="$MAX_RETRY_DELAY" \
      --dead-letter-topic="projects/$project/topics/$topic_dead_letter" \
      --max-delivery-attempts="$MAX_DELIVERY_ATTEMPTS"
  fi
  # Pub/Sub's own agent moves a message to the dead-letter topic, so it must be able to pull it
  # (pubsub/docs/handling-failures, dead-letter topics).
  grant "$pubsub_agent" roles/pubsub.subscriber gcloud pubsub subscriptions VERB "$subscription" --project="$project"
}

# --- observability --------------------------------------------------------------------------------

# opcancel's log lines as Cloud Logging stores them: a 2nd gen function logs as the Cloud Run
# service of its name (the query `gcloud functions logs read` builds, in surface/functions/logs/read.py),
# and every line carries the label component=opcancel.
logs_of_functions() {
  printf 'resource.type="cloud_run_revision" AND resource.labels.service_name=~"^%s-(requests|checks|http)$" AND labels.component="opcancel"' "$name"
}

json_string() {
  local text=${1//\\/\\\\}
  text=${text//\"/\\\"}
  printf '"%s"' "${text//$'\n'/\\n}"
}

# write_log_metric FILE EVENT DESCRIPTION [LABEL]: a counter of log lines whose jsonPayload.event is
# EVENT (or, given as `("A" OR "B")`, one of those), with jsonPayload.LABEL as the metric label LABEL. The definition's digest ends the description,
# so a re-run can tell whether the metric is the one this script would create.
write_log_metric() {
  local file=$1 event=$2 description=$3 label=${4:-} definition
  local filter
  if [[ $event == \(* ]]; then
    filter="$(logs_of_functions) AND jsonPayload.event=$event"
  else
    filter="$(logs_of_functions) AND jsonPayload.event=\"$event\""
  fi
  definition="{
  \"description\": $(json_string "$description [$DEPLOY_LABEL=@DIGEST@]"),
  \"filter\": $(json_string "$filter"),
  \"metricDescriptor\": {
    \"metricKind\": \"DELTA\",
    \"valueType\": \"INT64\",
    \"unit\": \"1\""
  if [[ -n $label ]]; then
    definition+=",
    \"labels\": [{\"key\": \"$label\", \"valueType\": \"STRING\", \"description\": \"jsonPayload.$label of the log line\"}]
  },
  \"labelExtractors\": {\"$label\": \"EXTRACT(jsonPayload.$label)\"}
}"
  else
    definition+="
  }
}"
  fi
  render "$definition" >"$file"
}

# TEXT with @DIGEST@ replaced by the digest of TEXT, which is left in $digest: a re-run compares it with
# the one the deployed resource carries, to tell whether the definition changed.
render() {
  digest=$(printf '%s' "$1" | digest_of)
  printf '%s\n' "${1//@DIGEST@/$digest}"
}

ensure_log_metric() {
  local metric=$1 file=$2
  if query gcloud logging metrics describe "$metric" --project="$project" --format='value(description)'; then
    [[ $answer == *"[$DEPLOY_LABEL=$digest]" ]] ||
      change gcloud logging metrics update "$metric" --project="$project" --config-from-file="$file"
  else
    change gcloud logging metrics create "$metric" --project="$project" --config-from-file="$file"
  fi
}

# One chart: TITLE, the time series FILTER, the aligner, the label to group by ("" for none), its place,
# and optionally the alignment period (default 60s) and the XyChart's thresholds (a JSON list).
chart() {
  local title=$1 filter=$2 aligner=$3 group=$4 x=$5 y=$6 period=${7:-60s} thresholds=${8:-} grouping=""
  if [[ -n $group ]]; then
    grouping=", \"crossSeriesReducer\": \"REDUCE_SUM\", \"groupByFields\": [\"$group\"]"
  elif [[ $aligner != ALIGN_MAX ]]; then
    grouping=", \"crossSeriesReducer\": \"REDUCE_SUM\""
  fi
  printf '      {"xPos": %s, "yPos": %s, "width": 6, "height": 4, "widget": {"title": %s, "xyChart": {"dataSets": [
        {"plotType": "STACKED_BAR", "minAlignmentPeriod": "%s", "timeSeriesQuery": {"timeSeriesFilter": {
          "filter": %s,
          "aggregation": {"alignmentPeriod": "%s", "perSeriesAligner": "%s"%s}}}}]%s}}}' \
    "$x" "$y" "$(json_string "$title")" "$period" "$(json_string "$filter")" "$period" "$aligner" "$grouping" \
    "${thresholds:+, \"thresholds\": $thresholds}"
}

# Cancels sent per budget window, with the budget as the chart's threshold line. A chart's alignment
# period is at least 60 s (monitoring/api/ref_v3/rest/v1/projects.dashboards, Aggregation), so a shorter
# window is drawn as K windows per bar against K times the budget, which is still a bound: any K windows
# in a row hold at most K*N cancels.
budget_chart() {
  local windows=$(((60 + budget_window_s - 1) / budget_window_s)) label
  label="budget $budget_text"
  ((windows == 1)) || label+=" ($((windows * budget_limit)) per $((windows * budget_window_s))s bar)"
  chart "Cancels sent per budget window, against the budget" "$(user_metric "$metric_cancels")" ALIGN_SUM "" \
    "$@" "$((windows * budget_window_s))s" "[{\"label\": $(json_string "$label"), \"value\": $((windows * budget_limit))}]"
}

user_metric() {
  printf 'metric.type="logging.googleapis.com/user/%s" resource.type="cloud_run_revision"' "$1"
}

results_with_outcome() {
  printf '%s metric.label.outcome="%s"' "$(user_metric "$metric_results")" "$1"
}

dead_letter_backlog() {
  printf 'metric.type="pubsub.googleapis.com/subscription/num_undelivered_messages" resource.type="pubsub_subscription" resource.label.subscription_id="%s"' "$topic_dead_letter"
}

# write_dashboard FILE [ETAG]: an update names the etag it read, so it never overwrites a newer edit.
write_dashboard() {
  local file=$1 etag=${2:-} definition
  definition="{
  \"displayName\": $(json_string "$dashboard_title"),
  \"labels\": {\"$DEPLOY_LABEL\": \"@DIGEST@\"},
  \"mosaicLayout\": {\"columns\": 12, \"tiles\": [
$(chart "Results by outcome" "$(user_metric "$metric_results")" ALIGN_SUM metric.label.outcome 0 0),
$(chart "Cancels sent" "$(user_metric "$metric_cancels")" ALIGN_SUM "" 6 0),
$(chart "Retries (redelivery asked for) by reason" "$(user_metric "$metric_retries")" ALIGN_SUM metric.label.reason 0 4),
$(chart "Takeovers of keys left by dead workers" "$(user_metric "$metric_takeovers")" ALIGN_SUM "" 6 4),
$(chart "Dead-letter backlog (undelivered messages)" "$(dead_letter_backlog)" ALIGN_MAX "" 0 8),
$(budget_chart 6 8),
$(chart "Held results (breaker open or paused)" "$(results_with_outcome HELD)" ALIGN_SUM "" 0 12),
$(chart "Dry-run results (shadow mode or dry_run requests)" "$(results_with_outcome DRY_RUN)" ALIGN_SUM "" 6 12),
$(chart "Breaker trips and pauses seen, by event" "$(user_metric "$metric_guard_events")" ALIGN_SUM metric.label.event 0 16)
  ]}
}"
  render "$definition" >"$file"
  if [[ -n $etag ]]; then
    local rendered
    rendered=$(<"$file")
    printf '{\n  "etag": %s,%s\n' "$(json_string "$etag")" "${rendered#\{}" >"$file"
  fi
}

# write_alert_policy FILE TITLE CONDITION CONTENT [MORE]: a policy with the one CONDITION (a JSON object),
# whose documentation is CONTENT and which notifies the --notification-channel list. MORE adds top-level
# fields (as `"name": value,` lines).
write_alert_policy() {
  local file=$1 title=$2 condition=$3 content=$4 more=${5:-} channel_list="" channel
  for channel in "${channels[@]}"; do
    channel_list+="${channel_list:+, }$(json_string "$channel")"
  done
  render "{
  \"displayName\": $(json_string "$title"),
  \"userLabels\": {\"$DEPLOY_LABEL\": \"@DIGEST@\"},
  \"combiner\": \"OR\",${more:+
$more}
  \"conditions\": [$condition],
  \"documentation\": {\"mimeType\": \"text/markdown\", \"content\": $(json_string "$content")},
  \"notificationChannels\": [$channel_list]
}" >"$file"
}

write_dead_letter_policy() {
  write_alert_policy "$1" "$dead_letter_policy_title" "{
    \"displayName\": $(json_string "$topic_dead_letter has undelivered messages"),
    \"conditionThreshold\": {
      \"filter\": $(json_string "$(dead_letter_backlog)"),
      \"comparison\": \"COMPARISON_GT\",
      \"thresholdValue\": 0,
      \"duration\": \"0s\",
      \"aggregations\": [{\"alignmentPeriod\": \"300s\", \"perSeriesAligner\": \"ALIGN_MAX\"}],
      \"trigger\": {\"count\": 1}
    }
  }" "Messages that kept failing wait in the subscription $topic_dead_letter of project $project.
Each is a request or a check that was never handled: read them with
gcloud pubsub subscriptions pull $topic_dead_letter --project=$project --limit=10,
fix the cause, and publish them again to their topic. docs/deploy.md, Observability, explains."
}

# The guard's alerts match its log lines themselves (a log-based alerting policy: LogMatch), not a
# log-based metric: Monitoring can refuse a policy on a log-based metric for up to 10 minutes after the
# metric is created (hashicorp/terraform-provider-google#11102), and a log match notifies again for a new
# line on an open incident. Google limits such a policy to one notification per 5 minutes and 20 a day
# (monitoring/alerts/log-based-incidents); with no matching line for 30 minutes the incident closes.
write_event_policy() {
  local file=$1 title=$2 event=$3 severity=$4 content=$5
  write_alert_policy "$file" "$title" "{
    \"displayName\": $(json_string "opcancel logged $event"),
    \"conditionMatchedLog\": {\"filter\": $(json_string "$(logs_of_functions) AND jsonPayload.event=\"$event\"")}
  }" "$content" "  \"alertStrategy\": {\"notificationRateLimit\": {\"period\": \"300s\"}, \"autoClose\": \"1800s\"},
  \"severity\": \"$severity\","
}

write_breaker_policy() {
  write_event_policy "$1" "$breaker_policy_title" breaker_tripped CRITICAL \
    "opcancel ($name) in project $project spent its cancel budget ($budget_text) and its breaker
tripped: every request is now HELD, not cancelled, until an operator resets the breaker.
Look before resetting: python -m function guard status shows the budget's use, python -m function held
lists what was held, and the cancel_sent log lines name what triggered each cancel.
Then python -m function guard reset, and held release KEY... (or held drop) for the held requests.
docs/guard-rails.md explains."
}

write_pause_policy() {
  write_event_policy "$1" "$pause_policy_title" guard_paused WARNING \
    "An instance of opcancel ($name) in project $project found cancelling paused: every new request is
HELD, not cancelled. python -m function guard status says who paused, when and why.
A pause set with python -m function guard pause ends with guard unpause; one pinned at deploy time
(deploy.sh --paused, OPCANCEL_PAUSED=true) ends with a deploy without --paused.
Then python -m function held lists the requests held meanwhile, for held release or held drop.
This alert fires when an instance first sees the pause, which takes a request: guard status is the truth."
}

ensure_dashboard() {
  local file=$work_dir/dashboard.json wanted
  write_dashboard "$file"
  wanted=$digest
  if find_one "<dashboard of $name>" gcloud monitoring dashboards list --project="$project" \
    --filter="displayName=$(json_string "$dashboard_title")" --format="value(name,etag,labels.$DEPLOY_LABEL)"; then
    local dashboard=${answer%%$'\t'*} rest=${answer#*$'\t'}
    if [[ ${rest#*$'\t'} != "$wanted" ]]; then
      write_dashboard "$file" "${rest%%$'\t'*}"
      change gcloud monitoring dashboards update "$dashboard" --project="$project" --config-from-file="$file"
    fi
  else
    change gcloud monitoring dashboards create --project="$project" --config-from-file="$file"
  fi
}

# ensure_alert_policy FILE TITLE WRITER: creates the policy WRITER writes to FILE, or updates it where its
# digest differs. PLACEHOLDER stands for the policy's name in a dry run.
ensure_alert_policy() {
  local file=$work_dir/$1 title=$2 placeholder=$3
  "$4" "$file"
  if find_one "$placeholder" gcloud alpha monitoring policies list --project="$project" \
    --filter="displayName=$(json_string "$title")" --format="value(name,userLabels.$DEPLOY_LABEL)"; then
    [[ ${answer#*$'\t'} == "$digest" ]] ||
      change gcloud alpha monitoring policies update "${answer%%$'\t'*}" --project="$project" --policy-from-file="$file"
  else
    change gcloud alpha monitoring policies create --project="$project" --policy-from-file="$file"
  fi
}

observe() {
  write_log_metric "$work_dir/metric-results.json" result_published \
    "opcancel ($name): result events published, by outcome" outcome
  ensure_log_metric "$metric_results" "$work_dir/metric-results.json"
  write_log_metric "$work_dir/metric-cancels-sent.json" cancel_sent "opcancel ($name): cancels the API accepted"
  ensure_log_metric "$metric_cancels" "$work_dir/metric-cancels-sent.json"
  write_log_metric "$work_dir/metric-retries.json" retry_later \
    "opcancel ($name): deliveries answered with a retry, by reason" reason
  ensure_log_metric "$metric_retries" "$work_dir/metric-retries.json"
  write_log_metric "$work_dir/metric-takeovers.json" takeover "opcancel ($name): keys taken over from dead workers"
  ensure_log_metric "$metric_takeovers" "$work_dir/metric-takeovers.json"
  write_log_metric "$work_dir/metric-guard-events.json" '("breaker_tripped" OR "guard_paused")' \
    "opcancel ($name): the breaker tripping and instances finding cancelling paused, by event" event
  ensure_log_metric "$metric_guard_events" "$work_dir/metric-guard-events.json"
  ensure_dashboard
  ensure_alert_policy alert-policy.json "$dead_letter_policy_title" "<alert policy of $name>" write_dead_letter_policy
  ensure_alert_policy alert-policy-breaker.json "$breaker_policy_title" "<breaker alert policy of $name>" \
    write_breaker_policy
  ensure_alert_policy alert-policy-pause.json "$pause_policy_title" "<pause alert policy of $name>" write_pause_policy
}

deploy() {
  local pubsub_agent topic scope previous function account role
  # Everything else calls these APIs, so they come first; `services enable` needs only Service Usage.
  enable_apis
  lookup "<project-number>" gcloud projects describe "$project" --format='value(projectNumber)'
  pubsub_agent=serviceAccount:service-$answer@gcp-sa-pubsub.iam.gserviceaccount.com
  scopes_of "${parents[@]}"
  if ((${#scopes[@]})); then
    plan_permissions
  else
    note "No allowed parents: the function will accept every organization and project, and its service" \
      "account gets no operation permission anywhere; grant one where it should act."
  fi

  for topic in "$topic_requests" "$topic_checks" "$topic_results" "$topic_dead_letter"; do
    ensure_topic "$topic"
  done
  # A topic delivers only to the subscriptions it has (pubsub/docs/subscription-overview): without this
  # one, dead letters would vanish.
  query gcloud pubsub subscriptions describe "$topic_dead_letter" --project="$project" --format='value(name)' ||
    change gcloud pubsub subscriptions create "$topic_dead_letter" --project="$project" \
      --topic="$topic_dead_letter" --message-retention-duration=7d --expiration-period=never

  ensure_service_account "$runtime_account" "opcancel function ($name)"
  ensure_service_account "$trigger_account" "opcancel Eventarc trigger ($name)"
  ensure_service_account "$build_account" "opcancel Cloud Build ($name)"
  ensure_service_account "$tasks_account" "opcancel Cloud Tasks publisher of checks ($name)"

  ensure_firestore
  grant "$runtime_member" roles/datastore.user gcloud projects VERB "$project"
  grant "$runtime_member" roles/pubsub.publisher gcloud pubsub topics VERB "$topic_results" --project="$project"
  # Only the tasks' account publishes checks: the function schedules them through the queue.
  revoke "$runtime_member" roles/pubsub.publisher gcloud pubsub topics VERB "$topic_checks" --project="$project"
  grant "$tasks_member" roles/pubsub.publisher gcloud pubsub topics VERB "$topic_checks" --project="$project"
  grant "$pubsub_agent" roles/pubsub.publisher gcloud pubsub topics VERB "$topic_dead_letter" --project="$project"
  # Push requests carry an identity token for the trigger's account. Projects made before April 2021
  # do not let Pub/Sub mint one unless granted (pubsub/docs/push, authentication), and granting it on
  # that one account is the narrowest.
  grant "$pubsub_agent" roles/iam.serviceAccountTokenCreator \
    gcloud iam service-accounts VERB "$trigger_account" --project="$project"
  for role in "${BUILD_ROLES[@]}"; do
    grant "$build_member" "$role" gcloud projects VERB "$project"
  done

  ensure_queue
  grant "$runtime_member" roles/cloudtasks.enqueuer gcloud tasks queues VERB "$queue" --project="$project" \
    --location="$region"
  # A task carrying the tasks' account's token is created only by a principal that may act as it
  # (iam.serviceAccounts.actAs: tasks/docs/reference/rest/v2, OAuthToken).
  grant "$runtime_member" roles/iam.serviceAccountUser \
    gcloud iam service-accounts VERB "$tasks_account" --project="$project"

  for scope in "${scopes[@]}"; do
    [[ -z ${scope_permissions[$scope]:-} ]] || grant_scope "$scope" "${scope_permissions[$scope]}"
  done
  read_deployed
  for previous in "${deployed_scopes[@]}"; do
    [[ -n ${scope_permissions[$previous]:-} ]] || revoke_scope "$previous"
  done
  if [[ $deployed_mode == shadow && $mode == enforce ]]; then
    note "The functions go from shadow mode to enforce: from this deploy on they send cancels."
  fi
  if [[ $deployed_paused == true ]] && ! $paused; then
    note "The functions are deployed paused (OPCANCEL_PAUSED=true) and this run has no --paused: it lifts that" \
      "pin. A pause set with \`guard pause\` stays."
  fi

  deploy_function "$function_requests" on_event "$topic_requests"
  deploy_function "$function_checks" on_event "$topic_checks"
  deploy_function "$function_http" on_http
  for function in "$function_requests" "$function_checks"; do
    # A 2nd gen function's invoker binding lives on its Cloud Run service ("the IAM binding for the invoker
    # role on the function's Cloud Run service": gcloud's command_lib/functions/run_util.py).
    policy_has "$trigger_member" roles/run.invoker \
      gcloud run services get-iam-policy "$function" --project="$project" --region="$region" ||
      change_retrying gcloud functions add-invoker-policy-binding "$function" --project="$project" \
        --region="$region" --member="$trigger_member"
    configure_subscription "$function" "$pubsub_agent"
  done

  observe

  if $dry_run; then
    note "The files the commands above name are kept in $work_dir."
  else
    note "Done. Send a first request with: gcloud pubsub topics publish $topic_requests" \
      "--project=$project --message=organizations/ORGANIZATION_ID/operations/OPERATION_ID"
  fi
}

# --- destroy --------------------------------------------------------------------------------------

destroy() {
  local function topic scope account role metric
  scopes=()
  read_deployed
  scopes_of "${parents[@]}"
  for scope in "${deployed_scopes[@]}"; do
    [[ " ${scopes[*]} " == *" $scope "* ]] || scopes+=("$scope")
  done
  # A function's trigger is part of the function (eventTrigger), so deleting the function deletes the
  # trigger and the subscription Eventarc made for it (observed in kernelci/kcidb#361, which lost the
  # messages waiting in it), and with them their IAM.
  for function in "$function_requests" "$function_checks" "$function_http"; do
    if query gcloud functions describe "$function" --project="$project" --region="$region" --gen2 \
      --format='value(name)'; then
      change gcloud functions delete "$function" --project="$project" --region="$region" --gen2 --quiet
    fi
  done
  if query gcloud tasks queues describe "$queue" --project="$project" --location="$region" --format='value(name)'; then
    change gcloud tasks queues delete "$queue" --project="$project" --location="$region" --quiet
  fi
  if query gcloud pubsub subscriptions describe "$topic_dead_letter" --project="$project" --format='value(name)'; then
    change gcloud pubsub subscriptions delete "$topic_dead_letter" --project="$project"
  fi
  for topic in "$topic_requests" "$topic_checks" "$topic_results" "$topic_dead_letter"; do
    if query gcloud pubsub topics describe "$topic" --project="$project" --format='value(name)'; then
      change gcloud pubsub topics delete "$topic" --project="$project"
    fi
  done
  for scope in "${scopes[@]}"; do
    revoke_scope "$scope"
  done
  revoke "$runtime_member" roles/datastore.user gcloud projects VERB "$project"
  for role in "${BUILD_ROLES[@]}"; do
    revoke "$build_member" "$role" gcloud projects VERB "$project"
  done
  for account in "$runtime_account" "$trigger_account" "$build_account" "$tasks_account"; do
    if query gcloud iam service-accounts describe "$account" --project="$project" --format='value(email)'; then
      change gcloud iam service-accounts delete "$account" --project="$project" --quiet
    fi
  done
  for metric in "$metric_results" "$metric_cancels" "$metric_retries" "$metric_takeovers" "$metric_guard_events"; do
    if query gcloud logging metrics describe "$metric" --project="$project" --format='value(name)'; then
      change gcloud logging metrics delete "$metric" --project="$project" --quiet
    fi
  done
  if find_one "<dashboard of $name>" gcloud monitoring dashboards list --project="$project" \
    --filter="displayName=$(json_string "$dashboard_title")" --format='value(name)'; then
    change gcloud monitoring dashboards delete "$answer" --project="$project" --quiet
  fi
  local title placeholder
  for title in "$dead_letter_policy_title" "$breaker_policy_title" "$pause_policy_title"; do
    case $title in
      "$breaker_policy_title") placeholder="<breaker alert policy of $name>" ;;
      "$pause_policy_title") placeholder="<pause alert policy of $name>" ;;
      *) placeholder="<alert policy of $name>" ;;
    esac
    if find_one "$placeholder" gcloud alpha monitoring policies list --project="$project" \
      --filter="displayName=$(json_string "$title")" --format='value(name)'; then
      change gcloud alpha monitoring policies delete "$answer" --project="$project" --quiet
    fi
  done
  $dry_run || note "Done. Kept: the Firestore database, whose TTL policy goes on expiring the idempotency records," \
    "and the APIs, which other workloads in the project may use."
}

if $destroy; then
  destroy
else
  work_dir=$(mktemp -d "${TMPDIR:-/tmp}/opcancel-deploy.XXXXXX")
  # A dry run keeps the files its printed commands name; a real run needs them only while it runs.
  $dry_run || trap 'rm -rf "$work_dir"' EXIT
  deploy
fi
