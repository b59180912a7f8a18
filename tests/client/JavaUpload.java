// JDK 17's java.net.http.HttpClient against the API: java JavaUpload.java BASE_URL IMAGE_PATH.
// The client defaults to HTTP/2, so on plain HTTP it offers `Upgrade: h2c`; it has no multipart
// builder, so each body is written by hand, as Java code does. Prints one line per case:
// CASE <tab> STATUS <tab> HTTP VERSION <tab> BODY; tests/client/test_http_clients.py judges.
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Base64;

public class JavaUpload {
    static final String BOUNDARY = "javaboundary";

    static byte[] form(String preamble, String padding, String disposition, byte[] image) throws Exception {
        ByteArrayOutputStream body = new ByteArrayOutputStream();
        body.write((preamble + "--" + BOUNDARY + padding + "\r\n").getBytes(StandardCharsets.UTF_8));
        body.write(("Content-Disposition: form-data; name=\"file\"; " + disposition + "\r\n").getBytes(StandardCharsets.UTF_8));
        body.write("Content-Type: image/jpeg\r\n\r\n".getBytes(StandardCharsets.UTF_8));
        body.write(image);
        body.write(("\r\n--" + BOUNDARY + padding + "\r\n").getBytes(StandardCharsets.UTF_8));
        body.write("Content-Disposition: form-data; name=\"submit\"\r\n\r\nUpload".getBytes(StandardCharsets.UTF_8));
        body.write(("\r\n--" + BOUNDARY + "--" + padding + "\r\n").getBytes(StandardCharsets.UTF_8));
        return body.toByteArray();
    }

    static void send(HttpClient client, String base, String name, HttpRequest.BodyPublisher body) throws Exception {
        HttpRequest request = HttpRequest.newBuilder(URI.create(base + "/upload"))
                .timeout(Duration.ofSeconds(30))
                .header("Content-Type", "multipart/form-data; boundary=" + BOUNDARY)
                .POST(body)
                .build();
        HttpResponse<String> response = client.send(request, HttpResponse.BodyHandlers.ofString());
        System.out.println(name + "\t" + response.statusCode() + "\t" + response.version() + "\t" + response.body());
    }

    public static void main(String[] args) throws Exception {
        String base = args[0];
        byte[] image = Files.readAllBytes(Path.of(args[1]));
        String encoded = Base64.getEncoder().encodeToString("naïve.jpg".getBytes(StandardCharsets.UTF_8));
        // A new client per case: each offers h2c on its first request.
        send(HttpClient.newHttpClient(), base, "rfc2047",
                HttpRequest.BodyPublishers.ofByteArray(form("", "", "filename=\"=?UTF-8?B?" + encoded + "?=\"", image)));
        send(HttpClient.newHttpClient(), base, "rfc5987",
                HttpRequest.BodyPublishers.ofByteArray(
                        form("A preamble.\r\n", " \t", "filename=\"naive.jpg\"; filename*=UTF-8''na%C3%AFve.jpg", image)));
        // Of unknown length: sent chunked, with the offer, as Spring's RestClient does.
        byte[] streamed = form("", "", "filename=\"=?UTF-8?Q?na=C3=AFve_photo.jpg?=\"", image);
        send(HttpClient.newHttpClient(), base, "chunked",
                HttpRequest.BodyPublishers.ofInputStream(() -> new ByteArrayInputStream(streamed)));
    }
}
