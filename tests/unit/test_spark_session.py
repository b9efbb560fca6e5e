"""The session's Spark properties: the jobs' defaults give way to a cluster's own spark-defaults.conf,
and ``VASP_SPARK_CONF`` overrides both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from vasp_jobs.common import spark as js


def test_defaults_apply_where_the_cluster_sets_nothing_and_spark_conf_wins():
    config = js.spark_config({"spark_master": "local[1]"}, env={})
    assert config.settings()["spark.ui.enabled"] == "false"
    assert config.settings()["spark.hadoop.fs.file.impl"] == "org.apache.hadoop.fs.RawLocalFileSystem"
    mine = config.settings(cluster={"spark.ui.enabled", "spark.eventLog.enabled"})
    assert "spark.ui.enabled" not in mine and "spark.eventLog.enabled" not in mine
    assert mine["spark.sql.adaptive.enabled"] == "true"  # the other defaults stay
    forced = js.spark_config(env={"VASP_SPARK_CONF": "spark.ui.enabled=true"})
    assert forced.settings(cluster={"spark.ui.enabled"})["spark.ui.enabled"] == "true"


SESSIONS = textwrap.dedent(
    """
    import json, os, sys
    from vasp_jobs.common.spark import get_session, spark_config

    def session(env):
        spark = get_session(spark_config({"spark_master": "local[1]"}, env=env))
        conf = spark.sparkContext.getConf()
        out = {k: conf.get(k, None) for k in ("spark.ui.enabled", "spark.eventLog.enabled", "spark.sql.adaptive.enabled")}
        out["ui_url"] = spark.sparkContext.uiWebUrl
        spark.range(3).count()
        spark.stop()
        return out

    print(json.dumps([session({}), session({"VASP_SPARK_CONF": "spark.ui.enabled=false"})]))
    """
)


def test_a_clusters_spark_defaults_conf_wins_over_the_defaults(tmp_path):
    """A real session started with a SPARK_CONF_DIR whose spark-defaults.conf turns the UI and the event
    log on has both; ``VASP_SPARK_CONF`` turns the UI off again."""
    conf_dir, events = tmp_path / "conf", tmp_path / "events"
    conf_dir.mkdir()
    events.mkdir()
    (conf_dir / "spark-defaults.conf").write_text(
        f"spark.ui.enabled true\nspark.ui.port 0\nspark.eventLog.enabled true\nspark.eventLog.dir file://{events}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VASP_SPARK", "PYSPARK_GATEWAY"))}
    env.update(SPARK_CONF_DIR=str(conf_dir), SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable)
    proc = subprocess.run(
        [sys.executable, "-c", SESSIONS], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cluster, overridden = json.loads(proc.stdout.strip().splitlines()[-1])
    assert cluster["spark.ui.enabled"] == "true" and cluster["ui_url"]
    assert cluster["spark.eventLog.enabled"] == "true" and len(os.listdir(events)) == 2  # one log per session
    assert cluster["spark.sql.adaptive.enabled"] == "true"  # the defaults the file leaves alone stay
    assert overridden["spark.ui.enabled"] == "false" and overridden["ui_url"] is None


RACE = textwrap.dedent(
    """
    from vasp_jobs.common.spark import HEARTBEAT_RACE, get_session, spark_config

    spark = get_session(spark_config({"spark_master": "local[1]"}))
    get_session(spark_config({"spark_master": "local[1]"}))  # built again
    jvm = spark._jvm
    filters = str(jvm.org.apache.logging.log4j.LogManager.getContext(False).getConfiguration().getFilter())
    print(filters.count(HEARTBEAT_RACE))
    utils = jvm.org.slf4j.LoggerFactory.getLogger("org.apache.spark.util.Utils")
    race = jvm.java.lang.NullPointerException("byPartition() is null")
    utils.error(HEARTBEAT_RACE, race)
    utils.error("Uncaught exception in thread another-thread", race)
    spark.stop()
    """
)


def test_the_heartbeaters_race_trace_stays_out_of_the_users_terminal(tmp_path):
    """Spark's own race (SPARK-59451) logs through the executor's heartbeater in a local session's JVM, whose
    stderr is the user's: that line is dropped, by one filter however many times the session is built; the
    same logger's other errors still print."""
    env = {**os.environ, "VASP_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", RACE], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["1"]
    assert "ERROR Utils: Uncaught exception in thread another-thread" in proc.stderr
    assert "executor-heartbeater" not in proc.stderr
