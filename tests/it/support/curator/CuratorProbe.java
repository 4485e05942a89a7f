// Apache Curator's service discovery, as a Java service uses it, for the ZooKeeper tests:
//
//   CuratorProbe <connect> register <service> <id> <address> <port>
//       registers the instance (payload: Spring Cloud's ZookeeperInstance, zone b), prints
//       "registered", and keeps the session until standard input closes;
//   CuratorProbe <connect> list <service>
//       prints one line per instance Curator reads:
//       id address port serviceType enabled payloadId metadata
import java.util.Map;
import java.util.TreeMap;

import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.retry.RetryOneTime;
import org.apache.curator.x.discovery.ServiceDiscovery;
import org.apache.curator.x.discovery.ServiceDiscoveryBuilder;
import org.apache.curator.x.discovery.ServiceInstance;
import org.springframework.cloud.zookeeper.discovery.ZookeeperInstance;

public class CuratorProbe {
    public static void main(String[] args) throws Exception {
        CuratorFramework client = CuratorFrameworkFactory.newClient(args[0], new RetryOneTime(100));
        client.start();
        client.blockUntilConnected();
        ServiceDiscovery<ZookeeperInstance> discovery = ServiceDiscoveryBuilder
            .builder(ZookeeperInstance.class)
            .client(client)
            .basePath("/services")
            .build();
        discovery.start();
        if (args[1].equals("register")) {
            ZookeeperInstance payload = new ZookeeperInstance(args[3], args[2], Map.of("zone", "b"));
            ServiceInstance<ZookeeperInstance> instance = ServiceInstance.<ZookeeperInstance>builder()
                .name(args[2])
                .id(args[3])
                .address(args[4])
                .port(Integer.parseInt(args[5]))
                .payload(payload)
                .build();
            discovery.registerService(instance);
            System.out.println("registered");
            System.out.flush();
            while (System.in.read() != -1) {}
        } else {
            for (ServiceInstance<ZookeeperInstance> found : discovery.queryForInstances(args[2])) {
                ZookeeperInstance payload = found.getPayload();
                System.out.println(found.getId() + " " + found.getAddress() + " " + found.getPort()
                    + " " + found.getServiceType() + " " + found.isEnabled()
                    + " " + payload.getId() + " " + new TreeMap<>(payload.getMetadata()));
            }
        }
        discovery.close();
        client.close();
    }
}
