"""A tiny Elasticsearch plugin that gives the integ-test zip what riskstream needs from the full distribution.

The integ-test zip on Maven Central lacks two modules of the default distribution that clients rely on:

- ``rest-root``: ``GET /`` (the node's name and version, used by ``Elasticsearch.info()`` and by health checks)
  and ``HEAD /`` (``Elasticsearch.ping()``);
- ``analysis-common``: the language analyzers, among them ``english``, which the document mapping uses.

The plugin below adds exactly these two, built the same way as upstream: the root document from
``org.elasticsearch.Build`` and the analyzer from Lucene's ``EnglishAnalyzer`` (which ships in the zip's
``lib/``). It is compiled once per Elasticsearch version with the JDK's ``javac`` into
``<es home>/plugins/riskstream-compat``. Production clusters run the full distribution and need none of this.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from launcher.base import run_checked

log = logging.getLogger(__name__)

PLUGIN_NAME = "riskstream-compat"
MARKER = ".riskstream-complete"

JAVA_SOURCE = r"""
package riskstream.es;

import java.util.Collection;
import java.util.List;
import java.util.Map;
import java.util.function.Predicate;
import java.util.function.Supplier;

import org.apache.lucene.analysis.Analyzer;
import org.apache.lucene.analysis.en.EnglishAnalyzer;
import org.elasticsearch.Build;
import org.elasticsearch.client.internal.node.NodeClient;
import org.elasticsearch.cluster.ClusterName;
import org.elasticsearch.cluster.metadata.IndexNameExpressionResolver;
import org.elasticsearch.cluster.node.DiscoveryNodes;
import org.elasticsearch.cluster.service.ClusterService;
import org.elasticsearch.common.bytes.BytesArray;
import org.elasticsearch.common.io.stream.NamedWriteableRegistry;
import org.elasticsearch.common.settings.ClusterSettings;
import org.elasticsearch.common.settings.IndexScopedSettings;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.common.settings.SettingsFilter;
import org.elasticsearch.features.NodeFeature;
import org.elasticsearch.index.analysis.AbstractIndexAnalyzerProvider;
import org.elasticsearch.index.analysis.AnalyzerProvider;
import org.elasticsearch.indices.analysis.AnalysisModule.AnalysisProvider;
import org.elasticsearch.node.Node;
import org.elasticsearch.plugins.ActionPlugin;
import org.elasticsearch.plugins.AnalysisPlugin;
import org.elasticsearch.plugins.Plugin;
import org.elasticsearch.rest.BaseRestHandler;
import org.elasticsearch.rest.RestController;
import org.elasticsearch.rest.RestHandler;
import org.elasticsearch.rest.RestRequest;
import org.elasticsearch.rest.RestResponse;
import org.elasticsearch.rest.RestStatus;
import org.elasticsearch.xcontent.XContentBuilder;

public class CompatPlugin extends Plugin implements ActionPlugin, AnalysisPlugin {
    private volatile ClusterService clusterService;

    @Override
    public Collection<?> createComponents(PluginServices services) {
        this.clusterService = services.clusterService();
        return List.of();
    }

    @Override
    public Map<String, AnalysisProvider<AnalyzerProvider<? extends Analyzer>>> getAnalyzers() {
        return Map.of("english", (indexSettings, environment, name, settings) -> new EnglishProvider(name, settings));
    }

    static final class EnglishProvider extends AbstractIndexAnalyzerProvider<EnglishAnalyzer> {
        private final EnglishAnalyzer analyzer = new EnglishAnalyzer();

        EnglishProvider(String name, Settings settings) {
            super(name, settings);
        }

        @Override
        public EnglishAnalyzer get() {
            return analyzer;
        }
    }

    @Override
    public Collection<RestHandler> getRestHandlers(
        Settings settings,
        NamedWriteableRegistry namedWriteableRegistry,
        RestController restController,
        ClusterSettings clusterSettings,
        IndexScopedSettings indexScopedSettings,
        SettingsFilter settingsFilter,
        IndexNameExpressionResolver indexNameExpressionResolver,
        Supplier<DiscoveryNodes> nodesInCluster,
        Predicate<NodeFeature> clusterSupportsFeature
    ) {
        return List.of(new RootHandler(settings, () -> clusterService));
    }

    static final class RootHandler extends BaseRestHandler {
        private final Settings settings;
        private final Supplier<ClusterService> clusterService;

        RootHandler(Settings settings, Supplier<ClusterService> clusterService) {
            this.settings = settings;
            this.clusterService = clusterService;
        }

        @Override
        public String getName() {
            return "riskstream_root_action";
        }

        @Override
        public List<Route> routes() {
            return List.of(new Route(RestRequest.Method.GET, "/"), new Route(RestRequest.Method.HEAD, "/"));
        }

        @Override
        protected RestChannelConsumer prepareRequest(RestRequest request, NodeClient client) {
            return channel -> {
                if (request.method() == RestRequest.Method.HEAD) {
                    String type = RestResponse.TEXT_CONTENT_TYPE;
                    channel.sendResponse(new RestResponse(RestStatus.OK, type, BytesArray.EMPTY));
                    return;
                }
                Build build = Build.current();
                ClusterService cs = clusterService.get();
                XContentBuilder b = channel.newBuilder();
                b.startObject();
                b.field("name", Node.NODE_NAME_SETTING.get(settings));
                b.field("cluster_name", ClusterName.CLUSTER_NAME_SETTING.get(settings).value());
                b.field("cluster_uuid", cs == null ? "_na_" : cs.state().metadata().clusterUUID());
                b.startObject("version");
                b.field("number", build.qualifiedVersion());
                b.field("build_flavor", build.flavor());
                b.field("build_type", build.type().displayName());
                b.field("build_hash", build.hash());
                b.field("build_date", build.date());
                b.field("build_snapshot", build.isSnapshot());
                b.field("lucene_version", org.apache.lucene.util.Version.LATEST.toString());
                b.field("minimum_wire_compatibility_version", build.minWireCompatVersion());
                b.field("minimum_index_compatibility_version", build.minIndexCompatVersion());
                b.endObject();
                b.field("tagline", "You Know, for Search");
                b.endObject();
                channel.sendResponse(new RestResponse(RestStatus.OK, b));
            };
        }
    }
}
"""

DESCRIPTOR = """\
description=riskstream: GET / and the english analyzer for the integ-test distribution
version={version}
name={name}
classname=riskstream.es.CompatPlugin
java.version=17
elasticsearch.version={version}
"""


def install_compat_plugin(es_home: Path, java_home: Path, es_version: str) -> Path | None:
    """Compile and install the plugin into ``es_home/plugins`` (once per distribution).

    Without a compiler (a JRE only) the node still starts, without ``GET /`` and the ``english`` analyzer: a
    warning says so and how to fix it, and health checks fall back to ``GET /_nodes/_local``.
    """
    target = es_home / "plugins" / PLUGIN_NAME
    if (target / MARKER).exists():
        return target
    javac = java_home / "bin" / "javac"
    jar = java_home / "bin" / "jar"
    if not javac.exists() or not jar.exists():
        log.warning(
            "the Java at %s has no javac: Elasticsearch starts without the %s plugin (no GET /, no english "
            "analyzer). Fix: install a JDK 17 (apt-get install openjdk-17-jdk-headless) or set "
            "RISKSTREAM_JAVA_HOME to one, then restart Elasticsearch.",
            java_home,
            PLUGIN_NAME,
        )
        return None
    work = Path(tempfile.mkdtemp(prefix="es-compat-"))
    try:
        src = work / "src" / "riskstream" / "es" / "CompatPlugin.java"
        src.parent.mkdir(parents=True)
        src.write_text(JAVA_SOURCE, encoding="utf-8")
        classes = work / "classes"
        classes.mkdir()
        run_checked(
            "elasticsearch",
            [str(javac), "--release", "17", "-nowarn", "-cp", f"{es_home}/lib/*", "-d", str(classes), str(src)],
            cause="compiling the Elasticsearch compatibility plugin failed",
            fix="check that RISKSTREAM_ES_VERSION is an 8.x release; report the compiler output below",
            timeout=300,
        )
        staging = work / PLUGIN_NAME
        staging.mkdir()
        run_checked(
            "elasticsearch",
            [str(jar), "cf", str(staging / f"{PLUGIN_NAME}.jar"), "-C", str(classes), "."],
            cause="packaging the Elasticsearch compatibility plugin failed",
            fix="check disk space",
            timeout=120,
        )
        (staging / "plugin-descriptor.properties").write_text(
            DESCRIPTOR.format(version=es_version, name=PLUGIN_NAME), encoding="utf-8"
        )
        (staging / MARKER).write_text(es_version + "\n", encoding="utf-8")
        for path in [staging, *staging.iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        target.parent.mkdir(exist_ok=True)
        target.parent.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(staging), str(target))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("installed %s into %s", PLUGIN_NAME, target)
    return target
